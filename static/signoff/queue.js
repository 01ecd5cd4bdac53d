// The live review queue: a websocket feeds held calls; decisions go back over it.
// Everything from a call (arguments, names) is untrusted text: it is only ever set with textContent.
"use strict";
(function () {
  const root = document.getElementById("queue");
  if (!root) return;
  const list = document.getElementById("calls");
  const template = document.getElementById("call-template");
  const resultTemplate = document.getElementById("result-template");
  const emptyNote = document.getElementById("queue-empty");
  const countBadge = document.getElementById("pending-count");
  const statusLine = document.getElementById("socket-status");
  const baseTitle = document.title;
  const cards = new Map(); // call id -> {element, call}
  let socket = null;
  let retryDelay = 500;
  const RESYNC_MS = 30000;
  let synced = false; // the first snapshot is what was already there: only later arrivals are announced

  function setStatus(text, state) {
    statusLine.textContent = text;
    statusLine.dataset.state = state;
  }

  function formatSeconds(total) {
    const s = Math.max(0, Math.round(total));
    const m = Math.floor(s / 60);
    return m > 0 ? `${m}m ${String(s % 60).padStart(2, "0")}s` : `${s}s`;
  }

  function refreshCounts() {
    const n = cards.size;
    countBadge.textContent = String(n);
    emptyNote.hidden = n > 0;
    document.title = n > 0 ? `(${n}) ${baseTitle}` : baseTitle;
  }

  function tick() {
    const now = Date.now();
    for (const { element, call } of cards.values()) {
      const left = (Date.parse(heldResult(call) ? call.result_deadline : call.deadline) - now) / 1000;
      const deadline = element.querySelector(".call-deadline");
      deadline.textContent = left > 0 ? `expires in ${formatSeconds(left)}` : "expiring…";
      deadline.classList.toggle("urgent", left < 60);
      element.querySelector(".call-waiting").textContent = formatSeconds((now - Date.parse(call.created_at)) / 1000);
    }
  }

  // Tell notify.js (desktop notification, sound) of a call that arrived while the page was open.
  function announce(call) {
    root.dispatchEvent(new CustomEvent("signoff:held", { detail: { call, count: cards.size } }));
  }

  function heldResult(call) {
    return call.result_review === "held";
  }

  function waiting(call) {
    return call.state === "pending" || heldResult(call);
  }

  function addCard(call) {
    const shown = cards.get(call.id);
    if (shown) {
      if (heldResult(shown.call) === heldResult(call)) return false;
      removeCard(call.id); // the held call was allowed and ran: now its result waits
    }
    if (heldResult(call)) return addResultCard(call);
    const element = template.content.firstElementChild.cloneNode(true);
    element.dataset.callId = call.id;
    element.id = `call-${call.id}`; // notification links end in #call-<id>
    element.querySelector(".call-server").textContent = call.server;
    element.querySelector(".call-tool").textContent = call.tool;
    element.querySelector(".call-requester").textContent = call.requester;
    element.querySelector(".call-token").textContent = call.token;
    element.querySelector(".call-arguments").textContent = JSON.stringify(call.arguments, null, 2);
    renderRisks(element, call);
    // Four eyes: no Allow or Always-Allow on the reviewer's own call, only Deny (the server refuses it too).
    const ownCall = call.four_eyes === true && String(call.requester_id) === root.dataset.userId;
    if (ownCall) {
      element.classList.add("own-call");
      element.querySelector("button[value=allow]").remove();
      element.querySelector(".always").remove();
      element.querySelector(".four-eyes-note").hidden = false;
    } else {
      element.querySelector(".four-eyes-note").remove(); // .badge's display would beat [hidden]
    }
    const form = element.querySelector("form");
    form.action = `/calls/${encodeURIComponent(call.id)}/decide/`;
    form.addEventListener("submit", (event) => {
      if (!socket || socket.readyState !== WebSocket.OPEN) return; // plain form post as fallback
      event.preventDefault();
      // Enter in the reason field submits with no submitter: the form's first button decides.
      const decision = event.submitter ? event.submitter.value : form.querySelector("button").value;
      const reason = form.querySelector("input[name=reason]").value;
      form.querySelectorAll("button").forEach((b) => (b.disabled = true));
      socket.send(JSON.stringify({ type: "decide", call_id: call.id, decision, reason }));
    });
    if (!ownCall) setUpAlwaysAllow(element, call);
    cards.set(call.id, { element, call });
    list.appendChild(element);
    refreshCounts();
    tick();
    return true;
  }

  // A held result: its texts with each finding highlighted where it is. The server cut the texts into
  // parts, wrote hidden characters out and masked secrets; every part is set as text, never as HTML.
  function addResultCard(call) {
    const element = resultTemplate.content.firstElementChild.cloneNode(true);
    element.dataset.callId = call.id;
    element.id = `call-${call.id}`;
    element.querySelector(".call-server").textContent = call.server;
    element.querySelector(".call-tool").textContent = call.tool;
    element.querySelector(".call-requester").textContent = call.requester;
    element.querySelector(".call-token").textContent = call.token;
    element.querySelector(".call-arguments").textContent = JSON.stringify(call.arguments, null, 2);
    const findings = element.querySelector(".result-findings");
    for (const finding of call.result_findings || []) {
      const item = document.createElement("li");
      item.className = `risk finding finding-${finding.kind}`;
      item.dataset.kind = finding.kind;
      const label = document.createElement("span");
      label.className = "risk-kind";
      label.textContent = finding.kind.replace(/_/g, " ");
      const where = document.createElement("code");
      where.textContent = finding.path || "/";
      item.append(label, document.createTextNode(` ${finding.detector.replace(/_/g, " ")} at `), where);
      if (finding.excerpt) {
        const excerpt = document.createElement("q");
        excerpt.textContent = finding.excerpt;
        item.append(document.createTextNode(": "), excerpt);
      }
      findings.appendChild(item);
    }
    const texts = element.querySelector(".result-texts");
    for (const text of call.result || []) {
      const heading = document.createElement("p");
      heading.className = "result-path";
      heading.textContent = text.path || "/";
      const body = document.createElement("pre");
      body.className = "result-text";
      for (const part of text.parts) {
        if (part.kind) {
          const mark = document.createElement("mark");
          mark.className = `finding-${part.kind}`;
          mark.title = `${part.kind.replace(/_/g, " ")}: ${part.detector.replace(/_/g, " ")}`;
          mark.dataset.kind = part.kind;
          mark.textContent = part.text;
          body.appendChild(mark);
        } else {
          body.appendChild(document.createTextNode(part.text));
        }
      }
      texts.append(heading, body);
    }
    element.querySelector(".result-truncated").hidden = !call.result_truncated;
    const form = element.querySelector("form");
    form.action = `/calls/${encodeURIComponent(call.id)}/result/`;
    form.addEventListener("submit", (event) => {
      if (!socket || socket.readyState !== WebSocket.OPEN) return; // plain form post as fallback
      event.preventDefault();
      const decision = event.submitter ? event.submitter.value : "block"; // Enter in the reason: the safe one
      const reason = form.querySelector("input[name=reason]").value;
      form.querySelectorAll("button").forEach((b) => (b.disabled = true));
      socket.send(JSON.stringify({ type: "decide_result", call_id: call.id, decision, reason }));
    });
    cards.set(call.id, { element, call });
    list.appendChild(element);
    refreshCounts();
    tick();
    return true;
  }

  function renderRisks(element, call) {
    const list = element.querySelector(".call-risks");
    list.replaceChildren();
    for (const risk of call.risks || []) {
      const item = document.createElement("li");
      item.className = `risk risk-${risk.severity}`;
      item.dataset.kind = risk.kind;
      const label = document.createElement("span");
      label.className = "risk-kind";
      label.textContent = risk.kind.replace(/Hint$/, "").replace(/_/g, " ");
      item.appendChild(label);
      item.appendChild(document.createTextNode(` ${risk.message}`));
      if (risk.pointer) {
        const where = document.createElement("code");
        where.textContent = risk.pointer;
        item.appendChild(document.createTextNode(" at "));
        item.appendChild(where);
      }
      if (risk.kind === "tool_changed") {
        const change = document.createElement("details");
        const summary = document.createElement("summary");
        summary.textContent = "Show the change";
        change.appendChild(summary);
        for (const [label, definition] of [["Approved", risk.before], ["Announced now", risk.after]]) {
          const heading = document.createElement("strong");
          heading.textContent = label;
          const body = document.createElement("pre");
          body.className = "definition";
          body.textContent = definition && Object.keys(definition).length ? JSON.stringify(definition, null, 2) : "(none)";
          change.append(heading, body);
        }
        item.appendChild(change);
      }
      if (risk.kind === "tool_changed" && root.dataset.canAcceptTools === "yes") {
        const accept = document.createElement("button");
        accept.type = "button";
        accept.className = "btn btn-small";
        accept.textContent = "Accept the new definition";
        accept.addEventListener("click", () => {
          accept.disabled = true;
          socket.send(JSON.stringify({ type: "accept_tool", call_id: call.id }));
        });
        item.appendChild(document.createTextNode(" "));
        item.appendChild(accept);
      }
      list.appendChild(item);
    }
  }

  function setUpAlwaysAllow(element, call) {
    const form = element.querySelector(".always-form");
    const textarea = form.querySelector("textarea");
    textarea.value = JSON.stringify(call.suggested_constraints || [], null, 2);
    const destructive = (call.risks || []).some((risk) => risk.kind === "destructiveHint");
    form.querySelector(".destructive-warning").hidden = !destructive;
    textarea.addEventListener("focus", () => (form.querySelector("input[value=constraints]").checked = true));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (!socket || socket.readyState !== WebSocket.OPEN) return;
      const scope = form.querySelector("input[name=scope]:checked").value;
      let constraints = null;
      if (scope === "constraints") {
        try {
          constraints = JSON.parse(textarea.value);
        } catch (e) {
          showCardError(call.id, `The constraints are not valid JSON: ${e.message}`);
          return;
        }
      }
      if (scope === "tool" && destructive && !window.confirm("This tool may destroy data. Allow every call of it, with any arguments?")) {
        return;
      }
      const reason = element.querySelector("input[name=reason]").value;
      element.querySelectorAll("button").forEach((b) => (b.disabled = true));
      socket.send(JSON.stringify({ type: "decide", call_id: call.id, decision: "always_allow", scope, constraints, reason }));
    });
  }

  function removeCard(id) {
    const entry = cards.get(id);
    if (!entry) return;
    entry.element.remove();
    cards.delete(id);
    refreshCounts();
  }

  function showCardError(id, message) {
    const entry = cards.get(id);
    if (!entry) return;
    entry.element.querySelector(".call-error").textContent = message;
    entry.element.querySelectorAll("button").forEach((b) => (b.disabled = false));
  }

  // The team's admins are told how many of its alerts are open as they change: the nav's badge follows.
  function showOpenAlerts(count) {
    const link = document.querySelector(".nav-alerts");
    if (!link || !Number.isInteger(count)) return;
    let badge = link.querySelector(".nav-badge");
    if (count <= 0) {
      if (badge) badge.remove();
      return;
    }
    if (!badge) {
      badge = document.createElement("span");
      badge.className = "nav-badge";
      link.append(" ", badge);
    }
    badge.textContent = String(count);
    badge.dataset.openAlerts = String(count);
    badge.title = `${count} open alert${count === 1 ? "" : "s"}`;
  }

  function onMessage(event) {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    if (message.type === "snapshot") {
      const ids = new Set(message.calls.map((c) => c.id));
      for (const id of Array.from(cards.keys())) if (!ids.has(id)) removeCard(id);
      message.calls.forEach((call) => {
        if (addCard(call) && synced) announce(call); // held while the socket was down
      });
      if (!synced) root.dispatchEvent(new CustomEvent("signoff:synced"));
      synced = true;
    } else if (message.type === "call") {
      if (waiting(message.call)) {
        if (addCard(message.call)) announce(message.call);
      } else removeCard(message.call.id);
    } else if (message.type === "tool_accepted") {
      const entry = cards.get(message.call_id);
      const item = entry && entry.element.querySelector(".risk[data-kind=tool_changed]");
      if (item) {
        item.className = "risk risk-info";
        item.textContent = message.accepted
          ? "New tool definition accepted: rules apply to it again from the next call."
          : "Nothing to accept: the definition was already accepted or changed again.";
      }
    } else if (message.type === "alerts") {
      showOpenAlerts(message.open);
    } else if (message.type === "decided") {
      removeCard(message.call_id);
    } else if (message.type === "error") {
      if (message.call_id) {
        showCardError(message.call_id, message.message);
        if (message.message.startsWith("already decided")) setTimeout(() => removeCard(message.call_id), 1500);
      } else {
        setStatus(message.message, "error");
      }
    }
  }

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(`${scheme}//${window.location.host}${root.dataset.socketPath}`);
    socket.addEventListener("open", () => {
      retryDelay = 500;
      setStatus("Live", "live");
    });
    socket.addEventListener("message", onMessage);
    socket.addEventListener("close", (event) => {
      if (event.code === 4403) {
        setStatus("You no longer have access to this team's queue. Reload the page.", "error");
        for (const id of Array.from(cards.keys())) removeCard(id);
        return;
      }
      setStatus(`Disconnected; reconnecting in ${Math.round(retryDelay / 1000)}s…`, "error");
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 15000);
    });
  }

  // The live updates are best effort (a busy channel layer may drop one): ask for the whole queue now and
  // then, and the snapshot handler adds what is missing and removes what is gone.
  function resync() {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "sync" }));
  }

  refreshCounts();
  setInterval(tick, 1000);
  setInterval(resync, RESYNC_MS);
  connect();
})();

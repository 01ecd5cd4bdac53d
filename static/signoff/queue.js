// The live review queue: a websocket feeds held calls; decisions go back over it.
// Everything from a call (arguments, names) is untrusted text: it is only ever set with textContent.
"use strict";
(function () {
  const root = document.getElementById("queue");
  if (!root) return;
  const list = document.getElementById("calls");
  const template = document.getElementById("call-template");
  const emptyNote = document.getElementById("queue-empty");
  const countBadge = document.getElementById("pending-count");
  const statusLine = document.getElementById("socket-status");
  const baseTitle = document.title;
  const cards = new Map(); // call id -> {element, call}
  let socket = null;
  let retryDelay = 500;

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
      const left = (Date.parse(call.deadline) - now) / 1000;
      const deadline = element.querySelector(".call-deadline");
      deadline.textContent = left > 0 ? `expires in ${formatSeconds(left)}` : "expiring…";
      deadline.classList.toggle("urgent", left < 60);
      element.querySelector(".call-waiting").textContent = formatSeconds((now - Date.parse(call.created_at)) / 1000);
    }
  }

  function addCard(call) {
    if (cards.has(call.id)) return;
    const element = template.content.firstElementChild.cloneNode(true);
    element.dataset.callId = call.id;
    element.querySelector(".call-server").textContent = call.server;
    element.querySelector(".call-tool").textContent = call.tool;
    element.querySelector(".call-requester").textContent = call.requester;
    element.querySelector(".call-token").textContent = call.token;
    element.querySelector(".call-arguments").textContent = JSON.stringify(call.arguments, null, 2);
    const form = element.querySelector("form");
    form.action = `/calls/${encodeURIComponent(call.id)}/decide/`;
    form.addEventListener("submit", (event) => {
      if (!socket || socket.readyState !== WebSocket.OPEN) return; // plain form post as fallback
      event.preventDefault();
      const decision = event.submitter ? event.submitter.value : "allow";
      const reason = form.querySelector("input[name=reason]").value;
      form.querySelectorAll("button").forEach((b) => (b.disabled = true));
      socket.send(JSON.stringify({ type: "decide", call_id: call.id, decision, reason }));
    });
    cards.set(call.id, { element, call });
    list.appendChild(element);
    refreshCounts();
    tick();
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
      message.calls.forEach(addCard);
    } else if (message.type === "call") {
      if (message.call.state === "pending") addCard(message.call);
      else removeCard(message.call.id);
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

  refreshCounts();
  setInterval(tick, 1000);
  connect();
})();

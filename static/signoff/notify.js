// The queue's attention getters: a desktop notification and a short sound when a call is held while the
// page is open (queue.js sends "signoff:held"), each switched on by the reviewer and remembered in this
// browser (localStorage). The pending count in the tab title is queue.js's. No inline script (CSP).
// A call's names come from an agent: they are passed to the Notification API as plain text only.
"use strict";
(function () {
  const root = document.getElementById("queue");
  const bar = document.getElementById("notify-bar");
  if (!root || !bar) return;
  const desktopButton = document.getElementById("notify-desktop");
  const soundButton = document.getElementById("notify-sound");
  const note = document.getElementById("notify-note");
  const DESKTOP_KEY = "signoff.notify.desktop";
  const SOUND_KEY = "signoff.notify.sound";
  const supported = "Notification" in window;
  let sound = null; // created on first use: no download for reviewers who keep it off

  function stored(key) {
    try {
      return window.localStorage.getItem(key) === "on";
    } catch (e) {
      return false; // storage off (privacy mode): nothing is remembered, nothing breaks
    }
  }

  function store(key, on) {
    try {
      window.localStorage.setItem(key, on ? "on" : "off");
    } catch (e) {
      /* not remembered */
    }
  }

  function desktopOn() {
    return supported && Notification.permission === "granted" && stored(DESKTOP_KEY);
  }

  function renderDesktop() {
    if (!supported) {
      desktopButton.hidden = true;
      return;
    }
    const on = desktopOn();
    desktopButton.setAttribute("aria-pressed", String(on));
    if (Notification.permission === "denied") {
      desktopButton.disabled = true;
      desktopButton.textContent = "Desktop notifications blocked";
      desktopButton.title = "This browser refuses notifications for this site: allow them in its site settings.";
    } else {
      desktopButton.disabled = false;
      desktopButton.textContent = on ? "Desktop notifications: on" : "Enable desktop notifications";
    }
  }

  function renderSound() {
    const on = stored(SOUND_KEY);
    soundButton.setAttribute("aria-pressed", String(on));
    soundButton.textContent = on ? "Sound: on" : "Sound: off";
  }

  function playSound() {
    if (!sound) sound = new Audio(bar.dataset.soundUrl);
    sound.currentTime = 0;
    const playing = sound.play();
    // Browsers refuse sound before the first click on a freshly loaded page: say so, quietly.
    if (playing && playing.catch) {
      playing.catch(() => (note.textContent = "The browser blocked the sound: click anywhere on the page once."));
    }
  }

  desktopButton.addEventListener("click", async () => {
    if (desktopOn()) {
      store(DESKTOP_KEY, false);
      renderDesktop();
      return;
    }
    let permission = Notification.permission;
    if (permission === "default") {
      try {
        permission = await Notification.requestPermission();
      } catch (e) {
        permission = "denied";
      }
    }
    store(DESKTOP_KEY, permission === "granted");
    renderDesktop();
  });

  soundButton.addEventListener("click", () => {
    const on = !stored(SOUND_KEY);
    store(SOUND_KEY, on);
    renderSound();
    note.textContent = "";
    if (on) playSound(); // a sample, and this click unlocks sound for the page
  });

  function focusCard(id) {
    const card = document.getElementById(`call-${id}`);
    if (!card) return;
    card.scrollIntoView({ block: "center" });
    card.classList.add("highlight");
    setTimeout(() => card.classList.remove("highlight"), 4000);
  }

  root.addEventListener("signoff:held", (event) => {
    const { call, count } = event.detail;
    if (stored(SOUND_KEY)) playSound();
    // Shown also while the page is in view: reviewers often keep the queue on a second screen.
    if (!desktopOn()) return;
    try {
      const shown = new Notification(`Held: ${call.server} / ${call.tool}`, {
        body: `${call.requester} (token ${call.token}) · ${count} waiting`,
        tag: `signoff-call-${call.id}`, // one per call, even with several queue tabs open
        icon: bar.dataset.iconUrl || undefined,
      });
      shown.addEventListener("click", () => {
        window.focus();
        focusCard(call.id);
        shown.close();
      });
    } catch (e) {
      /* some mobile browsers only notify from a service worker: the title count still shows it */
    }
  });

  // A link from a notification (email, chat, webhook) ends in #call-<id>: show that card once it is here.
  root.addEventListener("signoff:synced", () => {
    const match = /^#call-([0-9a-f-]{36})$/.exec(window.location.hash);
    if (match) focusCard(match[1]);
  });

  renderDesktop();
  renderSound();
})();

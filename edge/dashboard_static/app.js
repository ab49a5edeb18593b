// dishwatch pass dashboard. Plain JS, no dependencies, nothing fetched from outside this server.
// Every value from MQTT is data: it reaches the page only through textContent, attributes set from fixed
// lists, or encodeURIComponent in a same-origin URL. Never innerHTML.
"use strict";

(() => {
  const STATES = ["empty", "busy", "ok", "anomaly"];
  const MAX_EVENTS = 200;
  const SOUND_KEY = "dishwatch.sound";
  const model = {
    cameras: new Map(), // id -> camera view from the server
    events: new Map(), // id -> event
    items: new Map(), // id -> <li>
    history: new Map(), // "camera/slot" -> [[t, score, threshold], ...]
    broker: { connected: false, reconnects: 0, where: "" },
    historyS: 3600,
    serverLink: true,
    restoredUntil: 0,
    loading: false,
    pending: [],
  };

  // --- small helpers -------------------------------------------------------------------------------
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  const fmt = (v, digits = 4) => (typeof v === "number" ? Number(v.toPrecision(digits)).toString() : "–");
  const oneOf = (v, list, other) => (list.includes(v) ? v : other);
  function localTime(ev) {
    const d = new Date(ev.t * 1000);
    return isNaN(d) ? String(ev.ts) : d.toLocaleTimeString([], { hour12: false });
  }

  // --- sound ---------------------------------------------------------------------------------------
  let audio = null;
  const soundOn = () => localStorage.getItem(SOUND_KEY) !== "off";
  function renderSound() {
    const b = document.getElementById("sound");
    b.textContent = soundOn() ? "Sound: on" : "Sound: off";
    b.setAttribute("aria-pressed", String(soundOn()));
    b.classList.toggle("muted", !soundOn());
  }
  function beep() {
    document.body.dataset.beeps = String(Number(document.body.dataset.beeps || 0) + 1);
    if (!soundOn()) return;
    try {
      audio = audio || new AudioContext();
      if (audio.state === "suspended") audio.resume();
      for (let i = 0; i < 3; i++) {
        const o = audio.createOscillator();
        const g = audio.createGain();
        const t0 = audio.currentTime + i * 0.22;
        o.type = "square";
        o.frequency.value = 880;
        g.gain.setValueAtTime(0.15, t0);
        g.gain.exponentialRampToValueAtTime(0.001, t0 + 0.18);
        o.connect(g).connect(audio.destination);
        o.start(t0);
        o.stop(t0 + 0.2);
      }
    } catch (e) {
      console.warn("no sound:", e);
    }
  }
  document.getElementById("sound").addEventListener("click", () => {
    localStorage.setItem(SOUND_KEY, soundOn() ? "off" : "on");
    if (soundOn() && audio) audio.resume();
    renderSound();
  });
  // Browsers start audio only after a gesture: the first tap anywhere unlocks it.
  document.addEventListener("pointerdown", () => {
    if (soundOn() && !audio) {
      try {
        audio = new AudioContext();
      } catch (e) {
        /* no audio on this device */
      }
    }
  }, { once: true });

  // --- broker, server link and camera banners --------------------------------------------------------
  function renderBroker() {
    const pill = document.getElementById("broker");
    const b = model.broker;
    pill.className = "pill " + (b.connected ? "pill-ok" : "pill-bad");
    let text = b.connected ? "broker connected" : "broker disconnected";
    if (b.reconnects > 0) text += ` · reconnected ${b.reconnects}×`;
    pill.textContent = text;
    pill.dataset.reconnects = String(b.reconnects || 0);
    renderBanners();
  }

  function banner(kind, text) {
    const d = el("div", "banner banner-" + kind, text);
    d.setAttribute("role", "alert");
    return d;
  }

  function renderBanners() {
    const box = document.getElementById("banners");
    const list = [];
    if (!model.serverLink) list.push(banner("bad", "Lost the dashboard server — reconnecting…"));
    else if (!model.broker.connected) {
      const where = model.broker.where ? ` (${model.broker.where})` : "";
      list.push(banner("bad", `MQTT broker unreachable${where} — reconnecting…`));
    } else if (Date.now() < model.restoredUntil) {
      list.push(banner("good", "Broker connection restored"));
    }
    for (const cam of model.cameras.values()) {
      if (cam.problem) {
        const b = banner("bad", `Camera ${cam.id}: ${cam.problem === "offline" ? "OFFLINE" : cam.problem}`);
        b.dataset.camera = cam.id;
        list.push(b);
      }
    }
    box.replaceChildren(...list);
  }

  // --- cameras and slots ---------------------------------------------------------------------------
  function healthLine(cam) {
    const s = cam.stats || {};
    const parts = [
      cam.online ? "online" : cam.availability === "offline" ? "OFFLINE" : "no recent stats",
      `${fmt(s.input_fps, 3)} fps`,
      `inference ${fmt(s.inference_ms_p50, 3)} ms`,
      `spool ${typeof s.spool_depth === "number" ? s.spool_depth : "–"}`,
    ];
    if (typeof s.camera === "string") parts.push(`camera ${s.camera}`);
    if (typeof s.learned_events === "number" && s.learned_events > 0) {
      // the device learns from "False alarm" presses (edge/learning.py)
      const n = s.learned_events;
      parts.push(`learned from ${n} false alarm${n === 1 ? "" : "s"}`);
    }
    if (typeof cam.stats_age_s === "number") parts.push(`stats ${Math.round(cam.stats_age_s)} s ago`);
    return parts.join(" · ");
  }

  function renderCameras() {
    const box = document.getElementById("cameras");
    if (model.cameras.size === 0) return;
    const cards = [];
    for (const cam of [...model.cameras.values()].sort((a, b) => a.id.localeCompare(b.id))) {
      const card = el("article", "camera " + (cam.online ? "camera-online" : "camera-offline"));
      card.dataset.camera = cam.id;
      const head = el("div", "camera-head");
      head.append(el("h2", "", cam.id), el("p", "health", healthLine(cam)));
      const slots = el("div", "slots");
      for (const [slot, state] of Object.entries(cam.slots || {})) {
        const st = oneOf(state, STATES, "unknown");
        const tile = el("div", "slot state-" + st);
        tile.dataset.slot = slot;
        tile.dataset.state = st;
        tile.append(el("div", "slot-name", slot), el("div", "slot-state", st === "anomaly" ? "ANOMALY" : st));
        slots.append(tile);
      }
      card.append(head, slots);
      cards.push(card);
    }
    box.replaceChildren(...cards);
  }

  // --- the event feed ------------------------------------------------------------------------------
  function snapshotUrl(id) {
    return "/snapshot/" + encodeURIComponent(id) + ".jpg";
  }

  function eventItem(ev) {
    const verdict = oneOf(ev.verdict, ["ok", "anomaly"], "other");
    const li = el("li", "event verdict-" + verdict);
    li.dataset.id = ev.id;
    const head = el("div", "event-head");
    head.append(
      el("time", "event-time", localTime(ev)),
      el("span", "event-where", `${ev.camera} / ${ev.slot}`),
      el("span", "badge badge-" + verdict, ev.verdict),
      el("span", "event-score", `score ${fmt(ev.score)} / threshold ${fmt(ev.threshold)}` +
        (typeof ev.severity === "number" ? ` (${fmt(ev.severity, 3)}×)` : "")),
    );
    const body = el("div", "event-body");
    const fig = el("div", "event-snap");
    if (ev.snapshot) fig.append(snapImg(ev));
    else fig.append(el("span", "no-snap", "snapshot pending…"));
    const info = el("div", "event-info");
    if (ev.defect) info.append(el("p", "event-defect", `defect: ${ev.defect}`));
    const regs = el("ul", "regions");
    for (const r of ev.regions || []) {
      const where = `x ${fmt(r.x)}, y ${fmt(r.y)}, ${fmt(r.w)}×${fmt(r.h)} px`;
      regs.append(el("li", "", `${where}, score ${fmt(r.score)}` + (r.defect ? ` — ${r.defect}` : "")));
    }
    info.append(el("p", "regions-title", ev.regions && ev.regions.length ? "Defect regions:" : "No defect regions"));
    info.append(regs, feedbackBox(ev));
    body.append(fig, info);
    li.append(head, body);
    return li;
  }

  function snapImg(ev) {
    const img = el("img", "snap");
    img.alt = `snapshot of ${ev.camera} / ${ev.slot}`;
    img.src = snapshotUrl(ev.id);
    return img;
  }

  function feedbackBox(ev) {
    const box = el("div", "feedback");
    const falseBtn = el("button", "fb-false", "False alarm");
    const input = el("input", "fb-defect");
    input.type = "text";
    input.placeholder = "defect name (optional)";
    input.maxLength = 64;
    input.setAttribute("aria-label", "defect name");
    const confirmBtn = el("button", "fb-confirm", "Confirm defect");
    const status = el("span", "fb-status", "");
    falseBtn.type = confirmBtn.type = "button";
    falseBtn.addEventListener("click", () => sendFeedback(ev, "false_alarm", "", status));
    confirmBtn.addEventListener("click", () => {
      const name = input.value.trim().toLowerCase().replace(/\s+/g, "_");
      if (name && !/^[a-z0-9_-]{1,64}$/.test(name)) {
        status.textContent = "defect name: letters, digits, _ and - only";
        return;
      }
      sendFeedback(ev, "confirmed", name, status);
    });
    box.append(falseBtn, input, confirmBtn, status);
    if (ev.feedback) showFeedback(box, ev.feedback);
    return box;
  }

  function showFeedback(box, fb) {
    const status = box.querySelector(".fb-status");
    status.textContent = fb.label === "false_alarm" ? "✓ marked false alarm" :
      `✓ confirmed defect${fb.defect ? ": " + fb.defect : ""}`;
    box.dataset.label = oneOf(fb.label, ["false_alarm", "confirmed"], "");
  }

  async function sendFeedback(ev, label, defect, status) {
    status.textContent = "sending…";
    try {
      const r = await fetch("/api/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ camera: ev.camera, id: ev.id, label, defect: defect || null }),
      });
      const answer = await r.json();
      if (!r.ok) status.textContent = `not sent: ${answer.error || r.status}`;
      else showFeedback(status.parentElement, { label, defect });
    } catch (e) {
      status.textContent = "not sent: dashboard server unreachable";
    }
  }

  function addEvent(ev, live, track = true) {
    if (model.events.has(ev.id)) return;
    model.events.set(ev.id, ev);
    const li = eventItem(ev);
    model.items.set(ev.id, li);
    document.getElementById("feed").prepend(li);
    while (model.items.size > MAX_EVENTS) {
      const [oldest] = model.items.keys();
      model.items.get(oldest).remove();
      model.items.delete(oldest);
      model.events.delete(oldest);
    }
    if (track && typeof ev.score === "number") {
      const key = `${ev.camera}/${ev.slot}`;
      if (!model.history.has(key)) model.history.set(key, []);
      model.history.get(key).push([ev.t, ev.score, ev.threshold]);
    }
    if (live && ev.verdict === "anomaly") beep();
  }

  // --- score charts (canvas, drawn here) -------------------------------------------------------------
  function renderCharts() {
    const box = document.getElementById("charts");
    const now = Date.now() / 1000;
    const keys = [...model.history.keys()].sort();
    const existing = new Map([...box.children].map((c) => [c.dataset.key, c]));
    for (const key of keys) {
      if (!existing.has(key)) {
        const wrap = el("figure", "chart");
        wrap.dataset.key = key;
        wrap.append(el("figcaption", "", key), el("canvas"));
        box.append(wrap);
        existing.set(key, wrap);
      }
    }
    for (const key of keys) {
      // drawn after every chart is in place: a new one changes the width of the others
      const pts = model.history.get(key).filter((p) => p[0] >= now - model.historyS);
      model.history.set(key, pts);
      draw(existing.get(key).querySelector("canvas"), pts, now);
    }
  }

  function draw(canvas, pts, now) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 480;
    const h = canvas.clientHeight || 140;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    const g = canvas.getContext("2d");
    g.scale(dpr, dpr);
    g.clearRect(0, 0, w, h);
    const pad = { l: 44, r: 8, t: 8, b: 18 };
    const thr = pts.length ? pts[pts.length - 1][2] : null;
    const top = Math.max(1e-9, ...pts.map((p) => p[1]), typeof thr === "number" ? thr : 0) * 1.15;
    const x = (t) => pad.l + ((t - (now - model.historyS)) / model.historyS) * (w - pad.l - pad.r);
    const y = (v) => h - pad.b - (v / top) * (h - pad.t - pad.b);
    g.strokeStyle = "#555";
    g.lineWidth = 1;
    g.strokeRect(pad.l, pad.t, w - pad.l - pad.r, h - pad.t - pad.b);
    g.fillStyle = "#aaa";
    g.font = "11px sans-serif";
    g.fillText(fmt(top, 2), 2, pad.t + 9);
    g.fillText("0", 2, h - pad.b);
    g.fillText("−60 min", pad.l, h - 4);
    g.fillText("now", w - pad.r - 22, h - 4);
    if (typeof thr === "number") {
      g.strokeStyle = "#ff4d4d";
      g.setLineDash([6, 4]);
      g.beginPath();
      g.moveTo(pad.l, y(thr));
      g.lineTo(w - pad.r, y(thr));
      g.stroke();
      g.setLineDash([]);
    }
    g.strokeStyle = "#7fb3ff";
    g.beginPath();
    pts.forEach((p, i) => (i ? g.lineTo(x(p[0]), y(p[1])) : g.moveTo(x(p[0]), y(p[1]))));
    g.stroke();
    for (const p of pts) {
      g.fillStyle = typeof p[2] === "number" && p[1] > p[2] ? "#ff4d4d" : "#4dd07a";
      g.beginPath();
      g.arc(x(p[0]), y(p[1]), 3.5, 0, 2 * Math.PI);
      g.fill();
    }
  }

  // --- updates from the server ----------------------------------------------------------------------
  function apply(msg, live) {
    switch (msg.type) {
      case "event":
        addEvent(msg.event, live);
        renderCharts();
        break;
      case "snapshot": {
        const ev = model.events.get(msg.id);
        const li = model.items.get(msg.id);
        if (ev && li && !ev.snapshot) {
          ev.snapshot = true;
          li.querySelector(".event-snap").replaceChildren(snapImg(ev));
        }
        break;
      }
      case "slot": {
        const cam = model.cameras.get(msg.camera) || { id: msg.camera, slots: {}, online: false };
        cam.slots = { ...(cam.slots || {}), [msg.slot]: msg.state };
        model.cameras.set(msg.camera, cam);
        renderCameras();
        break;
      }
      case "camera":
        model.cameras.set(msg.camera.id, msg.camera);
        renderCameras();
        renderBanners();
        break;
      case "broker": {
        const before = model.broker.reconnects || 0;
        model.broker = msg.broker;
        if (msg.broker.connected && msg.broker.reconnects > before) {
          model.restoredUntil = Date.now() + 15000;
          setTimeout(renderBanners, 15100);
        }
        renderBroker();
        break;
      }
      case "feedback": {
        const li = model.items.get(msg.id);
        if (li) showFeedback(li.querySelector(".feedback"), msg.feedback);
        break;
      }
      default:
        break;
    }
  }

  async function loadState() {
    model.loading = true;
    try {
      const r = await fetch("/api/state", { cache: "no-store" });
      const s = await r.json();
      model.historyS = s.history_s || 3600;
      model.broker = s.broker;
      model.cameras = new Map(s.cameras.map((c) => [c.id, c]));
      model.history = new Map(s.history.map((h) => [`${h.camera}/${h.slot}`, h.points]));
      for (const ev of [...s.events].reverse()) {
        if (!model.events.has(ev.id)) addEvent(ev, false, false);
        else if (ev.snapshot) apply({ type: "snapshot", id: ev.id }, false);
      }
    } finally {
      model.loading = false;
      const pending = model.pending.splice(0);
      for (const m of pending) apply(m, true);
      renderBroker();
      renderCameras();
      renderCharts();
      document.body.dataset.ready = "1";
    }
  }

  function connect() {
    const es = new EventSource("/api/stream");
    es.onopen = () => {
      model.serverLink = true;
      loadState().catch((e) => console.warn("state:", e));
    };
    es.onmessage = (m) => {
      const msg = JSON.parse(m.data);
      if (model.loading) model.pending.push(msg);
      else apply(msg, true);
    };
    es.onerror = () => {
      model.serverLink = false;
      renderBanners();
    };
  }

  renderSound();
  connect();
  setInterval(renderCharts, 10000);
  window.addEventListener("resize", renderCharts);
})();

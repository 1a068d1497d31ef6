// The dashboard's own script: live calls list and transcript (the /events stream), the
// redeliver buttons, the assistant form, and web calls (the LiveKit browser SDK).
// Changes go through the JSON API with the session cookie and the page's CSRF token.
// Text from the server is set with textContent, never parsed as HTML.
"use strict";

(function () {
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";

  async function api(method, url, body) {
    const headers = { "x-csrf-token": csrf };
    if (body !== undefined) headers["content-type"] = "application/json";
    const response = await fetch(url, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    return { ok: response.ok, status: response.status, data };
  }

  function errorText(result) {
    const error = result.data && result.data.error;
    return error ? error.message : "The gateway answered " + result.status;
  }

  // ------------------------------------------------------------ live calls list
  function liveCallsList() {
    const rows = document.getElementById("call-rows");
    if (!rows || !rows.dataset.liveRows) return;
    const state = document.getElementById("live-state");
    let timer = null;
    let running = false;
    let again = false;
    async function refresh() {
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        const response = await fetch(rows.dataset.liveRows, { credentials: "same-origin" });
        if (response.ok) rows.innerHTML = await response.text();  // escaped by the server
      } finally {
        running = false;
        if (again) {
          again = false;
          schedule();
        }
      }
    }
    function schedule() {
      if (timer) clearTimeout(timer);
      timer = setTimeout(refresh, 300);
    }
    // From the last event before the page was read, so nothing in between is missed.
    const source = new EventSource("/events?last_event_id=" + rows.dataset.eventsAfter);
    for (const type of ["call.started", "call.status", "call.ended", "call.analyzed"]) {
      source.addEventListener(type, schedule);
    }
    source.onopen = () => { if (state) state.textContent = "Live"; };
    source.onerror = () => { if (state) state.textContent = "Reconnecting…"; };
  }

  // ------------------------------------------------------- live call transcript
  function clock(ms) {
    const seconds = Math.max(ms, 0) / 1000;
    return Math.floor(seconds / 60) + ":" + (seconds % 60).toFixed(1).padStart(4, "0");
  }

  function liveCall() {
    const article = document.getElementById("call");
    if (!article || !article.dataset.live) return;
    const callId = article.dataset.callId;
    const transcript = document.getElementById("transcript");
    const status = document.getElementById("call-status");
    const source = new EventSource(
      "/events?call_id=" + encodeURIComponent(callId) +
      "&last_event_id=" + article.dataset.eventsAfter);
    source.addEventListener("call.turn", (event) => {
      const turn = JSON.parse(event.data).turn;
      if (transcript.querySelector('tr[data-index="' + turn.index + '"]')) return;
      const row = document.createElement("tr");
      row.className = "turn speaker-" + turn.speaker + (turn.interrupted ? " interrupted" : "");
      row.dataset.index = String(turn.index);
      const cells = [clock(turn.start_ms), turn.speaker, turn.text];
      for (const text of cells) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.appendChild(cell);
      }
      if (turn.interrupted) {
        const badge = document.createElement("span");
        badge.className = "badge warn";
        badge.textContent = "interrupted";
        row.lastChild.append(" ", badge);
      }
      row.firstChild.className = "num";
      const later = Array.from(transcript.children).find(
        (r) => Number(r.dataset.index) > turn.index);
      transcript.insertBefore(row, later || null);
      const empty = document.getElementById("no-turns");
      if (empty) empty.remove();
    });
    source.addEventListener("call.status", (event) => {
      status.textContent = JSON.parse(event.data).status;
    });
    source.addEventListener("call.ended", () => {
      source.close();
      setTimeout(() => window.location.reload(), 300);  // duration, recording, cost
    });
  }

  // ------------------------------------------------------------------ redeliver
  function redeliverButtons() {
    for (const button of document.querySelectorAll("button.redeliver")) {
      button.addEventListener("click", async () => {
        const id = button.dataset.deliveryId;
        const out = button.parentElement.querySelector(".redeliver-result");
        button.disabled = true;
        const result = await api("POST", "/webhooks/deliveries/" + encodeURIComponent(id) + "/redeliver");
        button.disabled = false;
        if (result.ok) {
          out.textContent = " queued";
          const badge = button.closest("tr").querySelector(".delivery-status");
          if (badge) badge.textContent = result.data.status;
        } else {
          out.textContent = " " + errorText(result);
        }
      });
    }
  }

  // ------------------------------------------------------------- assistant form
  function formBody(form) {
    const body = {};
    const problems = {};
    for (const field of form.querySelectorAll("[name]")) {
      const name = field.name;
      const kind = field.dataset.kind || "text";
      const raw = kind === "bool" ? null : field.value.trim();
      if (kind === "bool") {
        body[name] = field.checked;
      } else if (kind === "int") {
        body[name] = raw === "" ? null : Number(raw);
      } else if (kind === "list") {
        body[name] = raw.split(",").map((s) => s.trim()).filter((s) => s !== "");
      } else if (kind === "json") {
        if (raw === "") {
          if (name === "analysis") body[name] = null;  // no plan
          continue;
        }
        try {
          body[name] = JSON.parse(raw);
        } catch (_) {
          problems[name] = "not valid JSON";
        }
      } else if (field.dataset.nullable && raw === "") {
        body[name] = null;
      } else {
        body[name] = field.value;
      }
    }
    return { body, problems };
  }

  function showFieldErrors(form, problems, general) {
    for (const span of form.querySelectorAll(".field-error")) span.textContent = "";
    for (const field of form.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
    const formError = document.getElementById("form-error");
    formError.hidden = !general;
    formError.textContent = general || "";
    for (const [name, message] of Object.entries(problems)) {
      const span = document.getElementById("err-" + name);
      const field = form.querySelector('[name="' + name + '"]');
      if (span) span.textContent = message;
      if (field) field.setAttribute("aria-invalid", "true");
      if (!span) {
        formError.hidden = false;
        formError.textContent = (formError.textContent + " " + name + ": " + message).trim();
      }
    }
  }

  function assistantForm() {
    const form = document.getElementById("assistant-form");
    if (!form) return;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const saved = document.getElementById("form-saved");
      saved.textContent = "";
      const { body, problems } = formBody(form);
      if (Object.keys(problems).length) {
        showFieldErrors(form, problems, "Fix the fields marked below.");
        return;
      }
      const result = await api(form.dataset.method, form.dataset.url, body);
      if (result.ok) {
        showFieldErrors(form, {}, "");
        if (form.dataset.method === "POST") {
          window.location.assign("/dashboard/assistants/" + encodeURIComponent(result.data.id));
        } else {
          saved.textContent = "Saved.";
        }
        return;
      }
      const fieldProblems = {};
      const generalProblems = [];
      const details = (result.data && result.data.error && result.data.error.details) || [];
      for (const detail of details) {
        const loc = (detail.loc || []).filter((part) => part !== "body");
        if (!loc.length) {
          generalProblems.push(detail.msg);
          continue;
        }
        const name = String(loc[0]);
        const where = loc.slice(1).join(".");
        const message = (where ? where + ": " : "") + detail.msg;
        fieldProblems[name] = fieldProblems[name] ? fieldProblems[name] + "; " + message : message;
      }
      showFieldErrors(form, fieldProblems, [errorText(result), ...generalProblems].join(": "));
    });
  }

  // ------------------------------------------------------------------ web calls
  // window.vgWebCall holds the call's moments (performance.now() ms) and, once joined, the
  // LiveKit session of /static/livekit-call.js (its meters), for people and tests.
  const webCall = (window.vgWebCall = { state: "idle" });

  function setWebCallState(text) {
    webCall.state = text;
    const state = document.getElementById("web-call-state");
    if (state) state.textContent = text;
  }

  async function startWebCall(button) {
    const hangup = document.getElementById("web-call-hangup");
    const link = document.getElementById("web-call-link");
    if (webCall.session || webCall.starting) return;  // one call at a time
    if (!window.VoiceGatewayCall || !window.LivekitClient) {
      setWebCallState("The LiveKit browser SDK did not load (scripts/ensure-web-assets.sh).");
      return;
    }
    let metadata = {};
    const variables = document.getElementById("web-call-metadata");
    if (variables && variables.value.trim() !== "") {
      try {
        metadata = JSON.parse(variables.value);
      } catch (_) {
        setWebCallState("The call variables are not valid JSON.");
        return;
      }
    }
    webCall.clickedAt = performance.now();
    webCall.greetingAt = undefined;
    webCall.starting = true;
    setWebCallState("Starting the call…");
    try {
      await placeWebCall(button, metadata, hangup, link);
    } finally {
      webCall.starting = false;
    }
  }

  async function placeWebCall(button, metadata, hangup, link) {
    const result = await api("POST", "/web-calls", {
      assistant_id: button.dataset.assistantId,
      metadata,
    });
    if (!result.ok) {
      setWebCallState("The call could not start: " + errorText(result));
      return;
    }
    const call = result.data;
    webCall.callId = call.call_id;
    link.href = "/dashboard/calls/" + encodeURIComponent(call.call_id);
    link.hidden = false;
    try {
      webCall.session = await window.VoiceGatewayCall.joinCall(call.livekit_url, call.token, {
        onRemoteAudio: (session) => {
          webCall.greetingAt = session.firstRemoteAudioAt;
          setWebCallState("Connected: the agent is speaking.");
        },
        onState: (state) => {
          if (state !== "disconnected") return;
          webCall.session = undefined;
          hangup.disabled = true;
          setWebCallState("The call has ended.");
        },
      });
    } catch (error) {
      webCall.session = undefined;
      setWebCallState("Could not connect: " + error.message);
      return;
    }
    hangup.disabled = false;
    hangup.focus();
    if (webCall.greetingAt === undefined) setWebCallState("Connected: waiting for the agent.");
  }

  function webCallButtons() {
    const hangup = document.getElementById("web-call-hangup");
    if (hangup) {
      hangup.addEventListener("click", () => {
        if (webCall.session) webCall.session.leave();
      });
    }
    for (const button of document.querySelectorAll("button.web-call-start")) {
      button.addEventListener("click", () => startWebCall(button));
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    liveCallsList();
    liveCall();
    redeliverButtons();
    assistantForm();
    webCallButtons();
    // Buttons that do nothing without this script are enabled only now.
    for (const button of document.querySelectorAll("button[data-needs-script]")) {
      button.disabled = false;
    }
    document.documentElement.dataset.ready = "true";
  });
})();

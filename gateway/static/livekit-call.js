// Browser side of a LiveKit call, over the LiveKit browser SDK (window.LivekitClient, from
// /static/vendor/livekit-client.umd.js): join a room, publish the microphone, play the remote
// participants' audio and measure its level with WebAudio. No DOM beyond one hidden
// container of <audio> elements; pages build their own UI on `window.VoiceGatewayCall`.
(function () {
  "use strict";

  // One AudioContext per page (Chromium limits them); resumed on first use.
  let sharedContext = null;
  function audioContext() {
    if (sharedContext === null) sharedContext = new AudioContext();
    if (sharedContext.state === "suspended") sharedContext.resume();
    return sharedContext;
  }

  // The level of a MediaStreamTrack: RMS of the newest AnalyserNode window (full scale 1.0),
  // sampled every `intervalMs`; `firstLoudAt` is the performance.now() of the first sample
  // over `threshold`, `bursts` the start of each loud stretch after `quietMs` of quiet (one
  // per utterance). stop() disconnects it.
  function levelMeter(track, options) {
    const opts = Object.assign({ threshold: 0.02, intervalMs: 20, quietMs: 500 }, options || {});
    const ctx = audioContext();
    const source = ctx.createMediaStreamSource(new MediaStream([track]));
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 2048;
    source.connect(analyser);
    const buffer = new Float32Array(analyser.fftSize);
    const meter = { rms: 0, peakRms: 0, firstLoudAt: null, loudSamples: 0, samples: 0, bursts: [] };
    let lastLoudAt = -Infinity;
    const timer = setInterval(function () {
      analyser.getFloatTimeDomainData(buffer);
      let sum = 0;
      for (let i = 0; i < buffer.length; i++) sum += buffer[i] * buffer[i];
      meter.rms = Math.sqrt(sum / buffer.length);
      meter.samples += 1;
      if (meter.rms > meter.peakRms) meter.peakRms = meter.rms;
      if (meter.rms > opts.threshold) {
        const now = performance.now();
        if (now - lastLoudAt > opts.quietMs) meter.bursts.push(now);
        lastLoudAt = now;
        meter.loudSamples += 1;
        if (meter.firstLoudAt === null) {
          meter.firstLoudAt = performance.now();
          if (opts.onLoud) opts.onLoud(meter);
        }
      }
    }, opts.intervalMs);
    meter.stop = function () {
      clearInterval(timer);
      source.disconnect();
    };
    return meter;
  }

  function audioContainer() {
    let box = document.getElementById("vg-remote-audio");
    if (box === null) {
      box = document.createElement("div");
      box.id = "vg-remote-audio";
      box.hidden = true;
      document.body.appendChild(box);
    }
    return box;
  }

  // Joins the room at `url` (ws:// or wss://) with `token`, publishes the microphone, and
  // plays and measures every remote audio track. Resolves to a session:
  //   {room, startedAt, connectedAt, micPublishedAt, remoteTracks: [{participant, meter}],
  //    firstRemoteAudioAt, state, error, leave()}
  // (times are performance.now()). `options.microphone` are the capture options of
  // setMicrophoneEnabled (e.g. {noiseSuppression: false, echoCancellation: false,
  // autoGainControl: false}: Chromium's processing fades a steady test tone within ~2 s);
  // `options.threshold` is the level counted as sound;
  // `options.onRemoteAudio(session)` runs at the first loud remote audio, `onState(state)`
  // on connection changes ("connecting", "connected", "reconnecting", "disconnected").
  async function joinCall(url, token, options) {
    const LK = window.LivekitClient;
    if (!LK) throw new Error("livekit-client is not loaded (/static/vendor/livekit-client.umd.js)");
    const opts = Object.assign({ threshold: 0.02 }, options || {});
    const room = new LK.Room({ adaptiveStream: false, dynacast: false });
    const session = {
      room: room,
      startedAt: performance.now(),
      connectedAt: null,
      micPublishedAt: null,
      firstRemoteAudioAt: null,
      remoteTracks: [],
      state: "connecting",
      error: null,
    };
    function setState(state) {
      session.state = state;
      if (opts.onState) opts.onState(state);
    }
    audioContext(); // created before any remote track, so the first one is measured at once
    room.on(LK.RoomEvent.TrackSubscribed, function (track, publication, participant) {
      if (track.kind !== LK.Track.Kind.Audio) return;
      // Chromium feeds a remote WebRTC stream to WebAudio only while a media element plays it.
      audioContainer().appendChild(track.attach());
      const meter = levelMeter(track.mediaStreamTrack, {
        threshold: opts.threshold,
        onLoud: function (m) {
          if (session.firstRemoteAudioAt === null) {
            session.firstRemoteAudioAt = m.firstLoudAt;
            if (opts.onRemoteAudio) opts.onRemoteAudio(session);
          }
        },
      });
      session.remoteTracks.push({ participant: participant.identity, sid: track.sid, meter: meter });
    });
    room.on(LK.RoomEvent.TrackUnsubscribed, function (track) {
      track.detach().forEach(function (el) { el.remove(); });
      session.remoteTracks
        .filter(function (t) { return t.sid === track.sid; })
        .forEach(function (t) { t.meter.stop(); });
    });
    room.on(LK.RoomEvent.Reconnecting, function () { setState("reconnecting"); });
    room.on(LK.RoomEvent.Reconnected, function () { setState("connected"); });
    room.on(LK.RoomEvent.Disconnected, function () { setState("disconnected"); });
    try {
      await room.connect(url, token);
      session.connectedAt = performance.now();
      setState("connected");
      await room.localParticipant.setMicrophoneEnabled(true, opts.microphone);
      session.micPublishedAt = performance.now();
    } catch (err) {
      session.error = String(err && err.message ? err.message : err);
      setState("disconnected");
      await room.disconnect();
      throw err;
    }
    session.leave = async function () {
      session.remoteTracks.forEach(function (t) { t.meter.stop(); });
      await room.disconnect();
    };
    return session;
  }

  window.VoiceGatewayCall = { joinCall: joinCall, levelMeter: levelMeter, audioContext: audioContext };
})();

// Joins the room named in the page's query (?url=&token=) and keeps what the test reads in
// window.spike.
(function () {
  "use strict";
  const params = new URLSearchParams(location.search);
  const spike = { state: "starting", error: null, session: null };
  window.spike = spike;
  // Every peer connection the SDK makes, to read which ICE candidates carried the media.
  const connections = [];
  const NativePC = window.RTCPeerConnection;
  window.RTCPeerConnection = function (config) {
    const pc = new NativePC(config);
    connections.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = NativePC.prototype;
  Object.setPrototypeOf(window.RTCPeerConnection, NativePC);
  // The nominated candidate pair of each connected peer connection.
  window.spikeIce = async function () {
    const pairs = [];
    for (const pc of connections) {
      const stats = await pc.getStats();
      stats.forEach(function (s) {
        if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
          const local = stats.get(s.localCandidateId);
          const remote = stats.get(s.remoteCandidateId);
          pairs.push({
            local: local.candidateType + " " + local.protocol + " " + local.address + ":" + local.port,
            remote: remote.candidateType + " " + remote.protocol + " " + remote.address + ":" + remote.port,
          });
        }
      });
    }
    return pairs;
  };
  window.VoiceGatewayCall.joinCall(params.get("url"), params.get("token"), {
    threshold: Number(params.get("threshold") || "0.02"),
    // A test tone, not a voice: Chromium's noise suppression would fade it out.
    microphone: params.get("raw") === "1"
      ? { echoCancellation: false, noiseSuppression: false, autoGainControl: false }
      : undefined,
    onState: function (s) { spike.state = s; document.getElementById("status").textContent = s; },
  }).then(function (session) { spike.session = session; }, function (err) {
    spike.error = String(err && err.message ? err.message : err);
  });
  // What the test polls: plain numbers only.
  window.spikeReport = function () {
    const s = spike.session;
    return {
      state: spike.state,
      error: spike.error,
      startedAt: s && s.startedAt,
      connectedAt: s && s.connectedAt,
      micPublishedAt: s && s.micPublishedAt,
      firstRemoteAudioAt: s && s.firstRemoteAudioAt,
      remote: s ? s.remoteTracks.map(function (t) {
        return { participant: t.participant, rms: t.meter.rms, peakRms: t.meter.peakRms,
                 samples: t.meter.samples, loud: t.meter.loudSamples };
      }) : [],
    };
  };
})();

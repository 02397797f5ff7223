// iotguard console: the live rates chart. Loaded from /console/static only (CSP: no inline script).
(function () {
  "use strict";
  var el = document.getElementById("rates-chart");
  if (!el || typeof uPlot === "undefined") { return; }
  var source = el.getAttribute("data-source");
  var xs = [], accepted = [], rejected = [];
  var last = null;
  var plot = new uPlot({
    title: "Readings per second (this hub process)", width: Math.min(1200, el.clientWidth || 1000), height: 300,
    series: [{}, { label: "accepted/s", stroke: "#1a7f37" }, { label: "rejected/s", stroke: "#b42318" }],
    axes: [{}, { label: "per second" }]
  }, [xs, accepted, rejected], el);
  function total(obj, keys) {
    for (var i = 0; i < keys.length; i++) { if (typeof obj[keys[i]] === "number") { return obj[keys[i]]; } }
    return 0;
  }
  function tick() {
    fetch(source, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) {
        if (!s) { return; }
        var now = Date.now() / 1000;
        var acc = total(s, ["stored"]);
        var rej = total(s, ["rejected_count"]);
        if (last) {
          var dt = Math.max(0.001, now - last.t);
          xs.push(now); accepted.push((acc - last.acc) / dt); rejected.push((rej - last.rej) / dt);
          if (xs.length > 150) { xs.shift(); accepted.shift(); rejected.shift(); }
          plot.setData([xs, accepted, rejected]);
        }
        last = { t: now, acc: acc, rej: rej };
      })
      .catch(function () { /* the next tick retries */ });
  }
  tick();
  setInterval(tick, 2000);
}());

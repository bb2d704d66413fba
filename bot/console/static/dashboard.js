// The dashboard's plots, drawn with the vendored uPlot from the series the server embedded.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("series").textContent);
  const xs = data.days.map((d) => Date.parse(d + "T12:00:00Z") / 1000);
  const palette = ["#1f3b57", "#d97706", "#0e9384", "#7a5af8", "#b42318", "#667085"];
  const width = (el) => Math.max(320, el.clientWidth - 8);

  function plot(id, named, options) {
    const el = document.getElementById(id);
    const names = Object.keys(named);
    if (!names.length) { el.textContent = "No data yet."; return; }
    const series = [{}].concat(names.map((name, i) => Object.assign({
      label: name, stroke: palette[i % palette.length], width: 2, spanGaps: true,
    }, (options && options.series && options.series[name]) || {})));
    new uPlot({ width: width(el), height: 240, series: series,
      axes: [{}, { label: (options && options.y) || "" }], scales: { x: { time: true } } },
      [xs].concat(names.map((n) => named[n])), el);
  }

  plot("plot-turns", data.turns, { y: "turns" });
  plot("plot-thumbs", { "up": data.thumbs_up, "down": data.thumbs_down }, { y: "ratings",
    series: { "up": { stroke: "#067647" }, "down": { stroke: "#b42318" } } });
  plot("plot-scores", data.scores, { y: "mean score" });
  plot("plot-latency", data.latency, { y: "ms" });
})();

/* Chart helpers over Plotly.js (served from the installed plotly package). */
"use strict";

const Charts = (() => {
  const base = { margin: { l: 55, r: 20, t: 30, b: 40 }, font: { family: "system-ui, sans-serif", size: 12, color: "#1a1a1a" },
    paper_bgcolor: "#ffffff", plot_bgcolor: "#ffffff", legend: { orientation: "h", y: -0.15 }, hovermode: "x unified" };
  const config = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"] };

  function layout(extra) { return Object.assign({}, base, extra || {}); }

  function draw(id, traces, extra) {
    const node = document.getElementById(id);
    if (!node || !window.Plotly) return null;
    window.Plotly.react(node, traces, layout(extra), config);
    return node;
  }

  function band(t, lo, hi, name, color) {
    return [
      { x: t, y: hi, type: "scatter", mode: "lines", line: { width: 0 }, hoverinfo: "skip", showlegend: false, name: name + " upper" },
      { x: t, y: lo, type: "scatter", mode: "lines", line: { width: 0 }, fill: "tonexty", fillcolor: color, name },
    ];
  }

  return { draw, band, layout };
})();

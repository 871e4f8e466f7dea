// Units view: one uPlot chart per signal from the series the page embeds (already downsampled on
// the server: at most two points per pixel). Flagged and rejected samples are drawn as marks.
"use strict";
(function () {
  const form = document.getElementById("unit-form");
  const charts = document.getElementById("charts");
  if (form) {
    const asset = document.getElementById("asset");
    const site = document.getElementById("site");
    form.addEventListener("submit", function () {
      const option = asset.options[asset.selectedIndex];
      if (option) site.value = option.dataset.site;
      document.getElementById("width").value = String(Math.round((charts || form).clientWidth || 1200));
    });
    asset.addEventListener("change", function () {
      document.getElementById("from").value = "";
      document.getElementById("to").value = "";
    });
  }
  const holder = document.getElementById("series-data");
  window.tidmCharts = [];
  if (!holder || !charts) return;
  const data = JSON.parse(holder.textContent);
  const width = Math.max(400, charts.clientWidth || 1200);
  const marks = function (stroke) {
    return { stroke: stroke, fill: stroke, width: 0, paths: function () { return null; },
             points: { show: true, size: 6, stroke: stroke, fill: stroke } };
  };
  for (const s of data.series) {
    const box = document.createElement("div");
    box.className = "chart";
    box.dataset.signal = s.signal;
    charts.appendChild(box);
    const tables = [s.trend, s.flagged];
    const modes = [[0, 1], [0, 0]];
    const series = [{}, { label: s.signal + (s.unit ? " [" + s.unit + "]" : ""), stroke: "#1f6feb", width: 1 },
                    Object.assign({ label: "flagged" }, marks("#d29922"))];
    if (s.rejected) {
      tables.push(s.rejected);
      modes.push([0, 0]);
      series.push(Object.assign({ label: "rejected" }, marks("#cf222e")));
    }
    const aligned = uPlot.join(tables, modes);
    const plot = new uPlot({
      width: width, height: 200, series: series,
      scales: { x: { time: true, min: data.from, max: data.to } },
      axes: [{}, { label: s.unit || "" }],
    }, aligned, box);
    box.dataset.series = String(plot.series.length - 1);
    box.dataset.points = String(s.points);
    window.tidmCharts.push({ signal: s.signal, series: plot.series.length - 1, points: s.points });
  }
  performance.mark("tidm-first-chart");
  document.body.dataset.charts = String(window.tidmCharts.length);
})();

// Gust dashboard: charts (uPlot), live logs (server-sent events), usage chart and confirm
// prompts. Data is only ever put into the page as text (textContent), never as markup.
(function () {
  "use strict";

  function withQuery(url, name, value) {
    return url + (url.indexOf("?") < 0 ? "?" : "&") + name + "=" + encodeURIComponent(value);
  }

  // A refresh or form answered "sign in again": the session ended (signed out elsewhere, the
  // token revoked); say so on the sign-in page rather than freeze.
  document.addEventListener("htmx:responseError", function (event) {
    if (event.detail.xhr && event.detail.xhr.status === 401) { window.location.assign("/ui/login"); }
  });

  function plural(count, word) { return count + " " + word + (count === 1 ? "" : "s"); }

  // Forms that change or delete something ask first.
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  function chartWidth(host) {
    return Math.max(280, Math.min(host.clientWidth || 600, 900) / 2 - 16);
  }

  function addChart(host, title, labels, colors, xs, columns) {
    var figure = document.createElement("figure");
    var caption = document.createElement("figcaption");
    caption.textContent = title;
    figure.appendChild(caption);
    host.appendChild(figure);
    var series = [{}];
    labels.forEach(function (label, i) {
      // Points too: a minute alone between empty ones is still seen.
      series.push({ label: label, stroke: colors[i], width: 2, points: { show: true, size: 4 } });
    });
    new uPlot({ width: chartWidth(host), height: 170, series: series, scales: { x: { time: true } } },
      [xs].concat(columns), figure);
  }

  // A function's minutes: one point per minute of the range, zero where nothing was counted.
  function drawStats(host, stats) {
    var start = Math.floor(Date.parse(stats.since) / 1000);
    var end = Math.floor(Date.now() / 60000) * 60;
    var byMinute = {};
    stats.minutes.forEach(function (m) { byMinute[Math.floor(Date.parse(m.minute) / 1000)] = m; });
    var xs = [];
    for (var t = start; t <= end; t += 60) { xs.push(t); }
    function column(read) {
      return xs.map(function (t) { var m = byMinute[t]; return m ? read(m) : 0; });
    }
    function maybe(read) {
      return xs.map(function (t) { var m = byMinute[t]; return m ? read(m) : null; });
    }
    host.textContent = "";
    var total = 0, errors = 0, cold = 0;
    stats.minutes.forEach(function (m) {
      total += m.invocations; errors += m.client_errors + m.server_errors; cold += m.cold_starts;
    });
    var summary = document.createElement("p");
    summary.id = "charts-summary";
    summary.textContent = plural(total, "request") + ", " + plural(errors, "error") + ", " +
      plural(cold, "cold start") + " in this range.";
    host.appendChild(summary);
    addChart(host, "Requests per minute by status", ["1xx-3xx", "4xx", "5xx"], ["#1b7f3b", "#b36200", "#c0172b"],
      xs, [column(function (m) { return m.ok; }), column(function (m) { return m.client_errors; }),
        column(function (m) { return m.server_errors; })]);
    addChart(host, "Latency (ms)", ["p50", "p99"], ["#0b5cad", "#7a3ea8"],
      xs, [maybe(function (m) { return m.p50_ms; }), maybe(function (m) { return m.p99_ms; })]);
    addChart(host, "Cold starts per minute", ["cold starts"], ["#0b5cad"],
      xs, [column(function (m) { return m.cold_starts; })]);
    function phase(name) {
      return maybe(function (m) { return m.cold_start_phases ? m.cold_start_phases[name] : null; });
    }
    addChart(host, "Cold start and its phases (ms, mean)",
      ["whole start", "prepare revision", "take worker", "limits", "place code", "load (import)"],
      ["#7a3ea8", "#555555", "#1b7f3b", "#b36200", "#c0172b", "#0b5cad"],
      xs, [maybe(function (m) { return m.cold_start_ms; }), phase("prepare_ms"), phase("worker_ms"),
        phase("limits_ms"), phase("place_ms"), phase("load_ms")]);
    addChart(host, "Where the time went (mean ms per request)", ["queue wait", "cold start", "run"],
      ["#b36200", "#7a3ea8", "#0b5cad"],
      xs, [maybe(function (m) { return m.queue_wait_ms; }),
        maybe(function (m) { return m.cold_starts && m.invocations ? m.cold_start_ms * m.cold_starts / m.invocations : 0; }),
        maybe(function (m) { return m.run_ms; })]);
    addChart(host, "Concurrency (mean requests running)", ["concurrency"], ["#1b7f3b"],
      xs, [column(function (m) { return m.concurrency; })]);
    addChart(host, "Throttled and failed starts per minute", ["throttled", "failed starts"], ["#b36200", "#c0172b"],
      xs, [column(function (m) { return m.throttled; }), column(function (m) { return m.start_failures; })]);
  }

  function charts() {
    var host = document.getElementById("charts");
    if (!host) { return; }
    var buttons = document.querySelectorAll("[data-range]");
    function load(range) {
      buttons.forEach(function (b) { b.setAttribute("aria-pressed", String(b.dataset.range === range)); });
      fetch(withQuery(host.dataset.stats, "since", range), { headers: { Accept: "application/json" } })
        .then(function (r) {
          if (!r.ok) { throw new Error("the server answered " + r.status); }
          return r.json();
        })
        .then(function (stats) { drawStats(host, stats); host.dataset.loaded = range; })
        .catch(function (error) { host.textContent = "Charts are not available: " + error.message; });
    }
    buttons.forEach(function (b) { b.addEventListener("click", function () { load(b.dataset.range); }); });
    load("1h");
  }

  function logs() {
    var list = document.getElementById("log-lines");
    if (!list) { return; }
    var source = null;
    function open(requestId) {
      if (source) { source.close(); }
      list.textContent = "";
      var url = list.dataset.stream;
      if (requestId) { url = withQuery(url, "request_id", requestId); }
      source = new EventSource(url);
      source.addEventListener("line", function (event) {
        var line = JSON.parse(event.data);
        var item = document.createElement("li");
        item.className = line.stream;
        var time = document.createElement("time");
        time.textContent = new Date(line.time_ms).toISOString().slice(11, 23);
        var id = document.createElement("code");
        id.textContent = line.request_id || "-";
        var text = document.createElement("span");
        text.className = "text";
        text.textContent = line.text;
        item.append(time, " ", id, " ", text);
        // Follows the newest line, unless the reader scrolled up to older ones.
        var following = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
        list.appendChild(item);
        if (following) { list.scrollTop = list.scrollHeight; }
        while (list.children.length > 1000) { list.removeChild(list.firstChild); }
      });
    }
    var filter = document.querySelector("form.log-filter");
    filter.addEventListener("submit", function (event) {
      event.preventDefault();
      open(filter.elements.request_id.value.trim());
    });
    window.addEventListener("pagehide", function () { if (source) { source.close(); } });
    open("");
  }

  function usageChart() {
    var host = document.getElementById("usage-chart");
    if (!host) { return; }
    var rows = JSON.parse(host.dataset.rows);
    var periods = [], functions = [];
    rows.forEach(function (r) {
      if (periods.indexOf(r[1]) < 0) { periods.push(r[1]); }
      if (functions.indexOf(r[0]) < 0) { functions.push(r[0]); }
    });
    if (periods.length < 2) { return; }
    periods.sort();
    var colors = ["#0b5cad", "#1b7f3b", "#b36200", "#7a3ea8", "#c0172b", "#2b6f77", "#6b5d00", "#444444"];
    var shown = functions.slice(0, colors.length);
    var xs = periods.map(function (p) { return Date.parse(p) / 1000; });
    var columns = shown.map(function (f) {
      return periods.map(function (p) {
        var row = rows.find(function (r) { return r[0] === f && r[1] === p; });
        return row ? row[2] : 0;
      });
    });
    var currency = host.dataset.currency ? " (" + host.dataset.currency + ")" : "";
    addChart(host, "Cost per period" + currency, shown, colors, xs, columns);
  }

  document.addEventListener("DOMContentLoaded", function () {
    charts();
    logs();
    usageChart();
  });
})();

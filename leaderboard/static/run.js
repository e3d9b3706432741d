/* medpeft leaderboard: the run view of runs/<shard>.html#<run_key>.
 *
 * Each shard page holds the stored records of its runs as JSON text in <pre class="record">, one
 * <section class="run-record" id="<run_key>"> per run (readable as is with JavaScript off). This
 * script draws the record named in the address as a run page: setup, results, per-class F1,
 * confusion matrix, training curves, samples, all metrics, history, provenance, files and spec.
 * It only builds DOM nodes and sets text (never HTML), so stored strings cannot inject markup.
 * Number formats mirror medpeft_cli/report/formatting.py.
 */
(function () {
  "use strict";

  var DASH = "\u2014";
  var SVG = "http://www.w3.org/2000/svg";

  // ---- formats (see formatting.py) ------------------------------------------------------------
  function isNum(x) { return typeof x === "number" && isFinite(x); }
  function missing(x) {
    if (x === null || x === undefined) return DASH;
    if (typeof x !== "number") return String(x);
    return null;
  }
  function grouped(n) { return Math.trunc(n).toLocaleString("en-US"); }
  function shortParams(n) {
    if (Math.abs(n) < 1000) return n.toFixed(0);
    var units = [[1e3, "K"], [1e6, "M"], [1e9, "B"]];
    for (var i = 0; i < units.length; i++) {
      if (Math.round(Math.abs(n) / units[i][0] * 10) / 10 < 1000) return (n / units[i][0]).toFixed(1) + units[i][1];
    }
    return (n / 1e12).toFixed(1) + "T";
  }
  function general(x) {
    // Python's "{:.4g}": 4 significant digits, no trailing zeros
    if (x === 0) return "0";
    var exp = Math.floor(Math.log10(Math.abs(x)));
    if (exp < -4 || exp >= 4) {
      var parts = x.toExponential(3).split("e");
      var mant = parts[0].replace(/\.?0+$/, "");
      var e = parseInt(parts[1], 10);
      return mant + "e" + (e < 0 ? "-" : "+") + (Math.abs(e) < 10 ? "0" : "") + Math.abs(e);
    }
    return String(parseFloat(x.toPrecision(4)));
  }
  var FORMATS = {
    metric: function (x) { return missing(x) || x.toFixed(3); },
    fraction: function (x) { return missing(x) || String(parseFloat((x * 100).toPrecision(6))) + " %"; },
    count: function (x) { return missing(x) || grouped(x); },
    params_exact: function (x) { return missing(x) || grouped(x) + " (" + shortParams(x) + ")"; },
    percent: function (x) {
      var m = missing(x);
      if (m) return m;
      if (x === 0) return "0 %";
      if (Math.abs(x) >= 10) return x.toFixed(1) + " %";
      return x.toFixed(Math.max(0, 1 - Math.floor(Math.log10(Math.abs(x))))) + " %";
    },
    seconds: function (x) {
      var m = missing(x);
      if (m) return m;
      if (x < 60) return x.toFixed(1) + " s";
      var t = Math.round(x);
      if (t < 3600) return Math.floor(t / 60) + " min " + String(t % 60).padStart(2, "0") + " s";
      return Math.floor(t / 3600) + " h " + String(Math.floor((t % 3600) / 60)).padStart(2, "0") + " min";
    },
    megabytes: function (x) { return missing(x) || Math.round(x).toLocaleString("en-US") + " MB"; },
    throughput: function (x) { return missing(x) || x.toLocaleString("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 }) + " img/s"; },
    bytes: function (x) {
      var m = missing(x);
      if (m) return m;
      var units = ["B", "KB", "MB", "GB"];
      for (var i = 0; i < units.length; i++) {
        if (Math.abs(x) < 1024 || units[i] === "GB") return units[i] === "B" ? x.toFixed(0) + " B" : x.toFixed(1) + " " + units[i];
        x /= 1024;
      }
    },
    value: function (x) {
      if (x === null || x === undefined) return DASH;
      if (typeof x === "object") return JSON.stringify(x);
      if (typeof x === "boolean") return x ? "true" : "false";
      if (typeof x === "number") return Number.isInteger(x) ? String(x) : general(x);
      return String(x);
    }
  };
  function fmt(x, kind) { return FORMATS[kind || "value"](x); }

  // ---- what a run page shows (labels as in the study's tables) ---------------------------------
  var SETUP = [
    ["status", "Status"], ["protocol_version", "Protocol version"], ["task", "Task"], ["dataset", "Dataset"],
    ["backbone", "Backbone"], ["weights", "Pretrained weights"], ["method", "Method"], ["data_fraction", "Training data", "fraction"],
    ["train_images", "Training images", "count"], ["seed", "Seed"], ["epochs", "Epochs"], ["lr", "Learning rate"],
    ["batch_size", "Batch size"], ["image_size", "Image size"], ["precision", "Precision"]
  ];
  var RESULTS = [["val_macro_f1", "Validation macro-F1", "metric"], ["best_epoch", "Selected epoch (best validation macro-F1)"], ["num_classes", "Classes"]];
  var PARAMS = [
    ["trainable_params", "Trainable parameters", "params_exact"], ["head_params", "of which classification head", "params_exact"],
    ["method_params", "of which added by the method", "params_exact"], ["total_params", "Total parameters", "params_exact"],
    ["trainable_pct", "Trainable share", "percent"]
  ];
  var COST = [
    ["wall_time_s", "Wall time", "seconds"], ["train_images_per_s", "Training throughput", "throughput"],
    ["peak_memory_mb", "Peak memory", "megabytes"], ["memory_kind", "Memory measured"], ["device", "Device"], ["world_size", "Processes"]
  ];
  var PROVENANCE = [
    ["run_key", "Run key"], ["medpeft_version", "medpeft version"], ["git_commit", "Git commit"], ["python_version", "Python"],
    ["torch_version", "torch"], ["timm_version", "timm"], ["peft_version", "peft"], ["accelerate_version", "accelerate"],
    ["device", "Device"], ["world_size", "Processes"], ["container_image", "Container image"], ["dataset_source", "Dataset source"],
    ["dataset_checksum", "Dataset split checksum"], ["backbone_source", "Backbone source"], ["weights_source", "Weights source"], ["backbone_checksum", "Backbone checksum"],
    ["speed_json", "Speed-only options"], ["started_at", "Started"], ["finished_at", "Finished"],
    ["submitter", "Submitted by (result bundle)"], ["bundle_sha256", "Result bundle sha256"]
  ];
  // Parts of the record that are not result-row columns (the parsed JSON columns, the run directory).
  var STRUCTURED = ["spec", "metrics", "class_names", "per_class_f1", "spec_json", "metrics_json", "class_names_json", "per_class_f1_json", "files"];

  // ---- the record -------------------------------------------------------------------------------
  // Columns stored as JSON text; parsed into record.spec, record.metrics, ... (kept as text when invalid).
  var JSON_COLUMNS = ["spec_json", "metrics_json", "class_names_json", "per_class_f1_json"];

  function parseStored(text) {
    try { return JSON.parse(text); } catch (e) { /* not strict JSON: try once more below */ }
    try {
      // Python's json writes NaN and Infinity (e.g. the losses of a diverged run), which JSON lacks
      return JSON.parse(text.replace(/([:\[,]\s*)(-?Infinity|NaN)(?=\s*[,\]}])/g, '$1"$2"'));
    } catch (e) {
      return undefined;
    }
  }

  function expand(record) {
    JSON_COLUMNS.forEach(function (column) {
      if (typeof record[column] !== "string") return;
      var value = parseStored(record[column]);
      if (value === undefined) return;
      record[column.slice(0, -5)] = value;
      delete record[column];
    });
    return record;
  }

  // ---- DOM helpers ------------------------------------------------------------------------------
  function el(tag, attrs) {
    var node = document.createElement(tag);
    for (var name in attrs || {}) node.setAttribute(name, attrs[name]);
    for (var i = 2; i < arguments.length; i++) add(node, arguments[i]);
    return node;
  }
  function add(node, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) child.forEach(function (c) { add(node, c); });
    else node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    for (var name in attrs || {}) node.setAttribute(name, attrs[name]);
    for (var i = 2; i < arguments.length; i++) add(node, arguments[i]);
    return node;
  }
  function section(title) {
    var rest = Array.prototype.slice.call(arguments, 1);
    return el("section", {}, el("h2", {}, title), rest);
  }
  function fieldsTable(pairs) {
    return el("table", { "class": "fields" }, el("tbody", {}, pairs.map(function (p) {
      return el("tr", {}, el("th", { scope: "row" }, p[0]), el("td", {}, p[1]));
    })));
  }
  function fields(record, spec) {
    return fieldsTable(spec.map(function (f) { return [f[1], fmt(record[f[0]], f[2])]; }));
  }
  function dataTable(head, rows, classes) {
    return el("table", { "class": "data" },
      el("thead", {}, el("tr", {}, head.map(function (h, i) { return el("th", { scope: "col", "class": classes[i] }, h); }))),
      el("tbody", {}, rows.map(function (r) { return el("tr", {}, r.map(function (c, i) { return el("td", { "class": classes[i] }, c); })); })));
  }
  function pretty(value) { return JSON.stringify(value, null, 2); }

  // ---- sections ---------------------------------------------------------------------------------
  function results(record, metrics) {
    var test = record.metrics && typeof record.metrics === "object" ? record.metrics.test || {} : {};
    var pairs = [];
    metrics.forEach(function (m) {
      var v = record["test_" + m.name];
      if (v === undefined || v === null) v = test[m.name];
      if (isNum(v)) pairs.push(["Test " + m.label, v.toFixed(m.decimals)]);
      else if (typeof v === "string") pairs.push(["Test " + m.label, v]); // NaN / inf of a diverged run
    });
    RESULTS.forEach(function (f) {
      if (record[f[0]] !== null && record[f[0]] !== undefined) pairs.push([f[1], fmt(record[f[0]], f[2])]);
    });
    return fieldsTable(pairs);
  }

  function perClass(record) {
    var scores = Array.isArray(record.per_class_f1) ? record.per_class_f1 : [];
    var names = Array.isArray(record.class_names) ? record.class_names : [];
    if (!scores.length && !names.length) return null;
    var rows = [];
    for (var i = 0; i < Math.max(scores.length, names.length); i++) {
      var name = names[i] === undefined || names[i] === null ? "class " + i : names[i];
      rows.push([String(i), fmt(name), fmt(scores[i], "metric")]);
    }
    return section("Per-class F1 (test)", dataTable(["#", "Class", "F1"], rows, ["num", "text", "num"]));
  }

  function confusion(files) {
    if (!files) return null;
    if (!files.confusion) return files.note ? section("Confusion matrix", el("p", { "class": "muted" }, "Not available: " + files.note + ".")) : null;
    var cm = files.confusion, n = 0;
    var body = cm.counts.map(function (row, i) {
      var total = row.reduce(function (a, b) { return a + b; }, 0);
      n += total;
      return el("tr", {}, el("th", { scope: "row", "class": "text" }, cm.names[i]), row.map(function (c, j) {
        var share = total ? c / total : 0;
        var css = "num shade" + Math.floor(share * 10) + (i === j ? " diag" : "");
        return el("td", { "class": css, title: (share * 100).toFixed(1) + " % of true " + cm.names[i] }, String(c));
      }), el("td", { "class": "num" }, String(total)));
    });
    var head = el("tr", {}, el("th", { scope: "col", "class": "text" }, "true \\ predicted"),
      cm.names.map(function (name) { return el("th", { scope: "col", "class": "num" }, name); }), el("th", { scope: "col", "class": "num" }, "total"));
    return section("Confusion matrix (test, " + n + " images)",
      el("div", { "class": "scroll" }, el("table", { "class": "data confusion" }, el("thead", {}, head), el("tbody", {}, body))),
      el("p", { "class": "muted" }, "Rows: true class; columns: predicted class; shading: share of the row. From predictions_test.csv."));
  }

  var COLORS = ["#1f5fbf", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#5c940d", "#e67700"];

  function ticks(lo, hi, count) {
    if (lo === hi) return [lo];
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / count)));
    var err = (hi - lo) / count / step;
    step *= err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
    var out = [];
    for (var t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(parseFloat(t.toPrecision(12)));
    return out;
  }

  // One line per series over the epochs; a dashed line marks the selected epoch.
  function lineChart(title, series, xs, selected) {
    var w = 520, h = 240, left = 56, right = 150, top = 12, bottom = 40;
    var x0 = left, x1 = w - right, y0 = h - bottom, y1 = top;
    var ys = [];
    series.forEach(function (s) { s.points.forEach(function (p) { ys.push(p[1]); }); });
    var xlo = Math.min.apply(null, xs), xhi = Math.max.apply(null, xs);
    var ylo = Math.min.apply(null, ys), yhi = Math.max.apply(null, ys);
    if (ylo === yhi) { ylo -= 0.5; yhi += 0.5; }
    var pad = (yhi - ylo) * 0.05;
    ylo -= pad; yhi += pad;
    function sx(v) { return xhi === xlo ? (x0 + x1) / 2 : x0 + (v - xlo) / (xhi - xlo) * (x1 - x0); }
    function sy(v) { return y0 - (v - ylo) / (yhi - ylo) * (y0 - y1); }
    function r(v) { return Math.round(v * 10) / 10; }
    var chart = svg("svg", { "class": "chart", viewBox: "0 0 " + w + " " + h, width: w, height: h, role: "img", "aria-label": title }, svg("title", {}, title));
    var grid = svg("g", { "class": "grid" }), axis = svg("g", { "class": "axis" });
    var yt = ticks(ylo, yhi, 5), xt = xs.length <= 12 ? xs : ticks(xlo, xhi, 8);
    yt.forEach(function (t) {
      grid.appendChild(svg("line", { x1: x0, x2: x1, y1: r(sy(t)), y2: r(sy(t)) }));
      axis.appendChild(svg("text", { x: x0 - 6, y: r(sy(t)), dy: "0.32em", "text-anchor": "end" }, general(t)));
    });
    xt.forEach(function (t) {
      grid.appendChild(svg("line", { x1: r(sx(t)), x2: r(sx(t)), y1: y0, y2: y1 }));
      axis.appendChild(svg("text", { x: r(sx(t)), y: y0 + 16, "text-anchor": "middle" }, general(t)));
    });
    axis.appendChild(svg("line", { x1: x0, x2: x1, y1: y0, y2: y0 }));
    axis.appendChild(svg("line", { x1: x0, x2: x0, y1: y0, y2: y1 }));
    axis.appendChild(svg("text", { "class": "label", x: (x0 + x1) / 2, y: h - 6, "text-anchor": "middle" }, "epoch"));
    add(chart, [grid, axis]);
    if (isNum(selected)) {
      chart.appendChild(svg("line", { "class": "mark", x1: r(sx(selected)), x2: r(sx(selected)), y1: y0, y2: y1 }, svg("title", {}, "selected")));
    }
    series.forEach(function (s, i) {
      var color = COLORS[i % COLORS.length];
      var g = svg("g", { "class": "series", stroke: color, fill: color });
      var d = s.points.map(function (p, j) { return (j ? "L" : "M") + r(sx(p[0])) + "," + r(sy(p[1])); }).join("");
      if (s.points.length > 1) g.appendChild(svg("path", { "class": "line", d: d }));
      else g.appendChild(svg("circle", { cx: r(sx(s.points[0][0])), cy: r(sy(s.points[0][1])), r: 3.5 }));
      chart.appendChild(g);
      chart.appendChild(svg("g", { "class": "legend" },
        svg("line", { x1: x1 + 12, x2: x1 + 28, y1: top + 8 + i * 16, y2: top + 8 + i * 16, stroke: color, "stroke-width": 2 }),
        svg("text", { x: x1 + 32, y: top + 8 + i * 16, dy: "0.32em" }, s.name)));
    });
    return chart;
  }

  function curves(history, best, metrics) {
    if (!Array.isArray(history) || !history.length) return null;
    var wanted = {};
    metrics.forEach(function (m) { wanted["val_" + m.name] = true; });
    wanted.val_ece = true;
    var xs = history.map(function (h, i) { return isNum(h && h.epoch) ? h.epoch : i + 1; });
    var keys = [];
    history.forEach(function (h) {
      for (var k in h || {}) if (keys.indexOf(k) < 0 && isNum(h[k]) && ["epoch", "lr", "train_images_per_s"].indexOf(k) < 0) keys.push(k);
    });
    var panels = [
      ["Training loss", keys.filter(function (k) { return k.indexOf("loss") >= 0; })],
      ["Validation metrics", keys.filter(function (k) { return wanted[k]; })]
    ];
    var figures = [];
    panels.forEach(function (panel) {
      var series = panel[1].map(function (k) {
        var pts = [];
        history.forEach(function (h, i) { if (h && isNum(h[k])) pts.push([xs[i], h[k]]); });
        return { name: k, points: pts };
      }).filter(function (s) { return s.points.length; });
      if (!series.length) return;
      figures.push(el("figure", {}, lineChart(panel[0], series, xs, best),
        el("figcaption", {}, panel[0] + " per epoch; the dashed line marks the selected epoch.")));
    });
    return figures.length ? section("Training curves", el("div", { "class": "figures" }, figures)) : null;
  }

  function historyTable(history) {
    if (!Array.isArray(history) || !history.length || !history.every(function (h) { return h && typeof h === "object" && !Array.isArray(h); })) return null;
    var columns = [];
    history.forEach(function (h) { for (var k in h) if (columns.indexOf(k) < 0) columns.push(k); });
    var rows = history.map(function (h) { return columns.map(function (c) { return fmt(h[c]); }); });
    return section("Training history", el("div", { "class": "scroll" }, dataTable(columns, rows, columns.map(function () { return "num"; }))));
  }

  function metricSections(record) {
    var out = [];
    if (typeof record.metrics_json === "string") return [section("Other metrics", el("pre", {}, record.metrics_json))];
    var m = record.metrics;
    if (!m || typeof m !== "object" || Array.isArray(m)) return m === undefined || m === null ? [] : [section("Other metrics", el("pre", {}, pretty(m)))];
    var boxes = [], leftover = {}, any = false;
    for (var name in m) {
      if (name === "history" && historyTable(m.history)) continue;
      var content = m[name];
      if (content && typeof content === "object" && !Array.isArray(content)) {
        boxes.push(el("div", {}, el("h3", {}, name), fieldsTable(Object.keys(content).map(function (k) { return [k, fmt(content[k])]; }))));
      } else {
        leftover[name] = content;
        any = true;
      }
    }
    if (boxes.length) out.push(section("All metrics", el("div", { "class": "grid" }, boxes)));
    if (any) out.push(section("Other metrics", el("pre", {}, pretty(leftover))));
    return out;
  }

  function filesSection(record, key) {
    var files = record.files;
    if (!files) {
      return section("Files", el("p", { "class": "muted" }, "The run directory ", el("code", {}, "runs/" + key + "/"),
        " was not available when this site was built (build with ", el("code", {}, "medpeft report --runs-dir"),
        " to publish its small files and the confusion matrix)."));
    }
    var rows = files.files.map(function (f) {
      var name = f.published ? el("a", { href: key + "/" + f.path }, f.path)
        : [f.path, " ", el("span", { "class": "muted" }, "(not published: weights or large file; in ", el("code", {}, "runs/" + key + "/"), ")")];
      return el("tr", {}, el("td", { "class": "text" }, name), el("td", { "class": "num" }, fmt(f.size, "bytes")));
    });
    return section("Files", el("table", { "class": "data" },
      el("thead", {}, el("tr", {}, el("th", { scope: "col", "class": "text" }, "File"), el("th", { scope: "col", "class": "num" }, "Size"))),
      el("tbody", {}, rows)));
  }

  function samples(files, key) {
    if (!files || !files.samples || !files.samples.length) return null;
    return section("Samples", el("p", { "class": "muted" }, "Generated images of the first evaluation seed, with their prompts."),
      el("div", { "class": "samples" }, files.samples.map(function (s) {
        return el("figure", {}, el("img", { src: key + "/" + s.path, alt: s.caption, loading: "lazy", width: 128, height: 128 }), el("figcaption", {}, s.caption));
      })));
  }

  function otherFields(record, metrics) {
    var shown = {};
    [SETUP, RESULTS, PARAMS, COST, PROVENANCE].forEach(function (g) { g.forEach(function (f) { shown[f[0]] = true; }); });
    metrics.forEach(function (m) { shown["test_" + m.name] = true; });
    STRUCTURED.forEach(function (k) { shown[k] = true; });
    var pairs = Object.keys(record).filter(function (k) { return !shown[k] && record[k] !== null; }).map(function (k) { return [k, fmt(record[k])]; });
    return pairs.length ? section("Other fields", fieldsTable(pairs)) : null;
  }

  function draw(view, record, key, links, metrics) {
    var ok = record.status === "ok";
    var history = record.metrics && typeof record.metrics === "object" ? record.metrics.history : null;
    var spec = typeof record.spec_json === "string" ? record.spec_json : record.spec === undefined || record.spec === null ? null : pretty(record.spec);
    var meta = [fmt(record.dataset), fmt(record.backbone), fmt(record.method), fmt(record.data_fraction, "fraction") + " of the training data",
      "seed " + fmt(record.seed), "protocol v" + fmt(record.protocol_version)].join(" \u00b7 ");
    add(view, [
      el("p", { "class": "crumbs" }, el("a", { href: "../index.html" }, "\u2190 overview"), " \u00b7 ",
        el("a", { href: "../" + links.dataset }, "dataset " + fmt(record.dataset)), " \u00b7 ",
        el("a", { href: "../" + links.method }, "method " + fmt(record.method))),
      el("h1", {}, "Run ", el("code", { "class": "key" }, key)),
      el("p", { "class": "meta" }, ok ? null : [el("span", { "class": "status" }, fmt(record.status)), " "], meta),
      ok ? null : el("p", { "class": "notice" }, "This run's status is not ", el("code", {}, "ok"), ": it is listed on the leaderboard but not included in any mean."),
      el("div", { "class": "grid" }, section("Setup", fields(record, SETUP)), section("Results", results(record, metrics)),
        section("Parameters", fields(record, PARAMS)), section("Cost", fields(record, COST))),
      el("div", { "class": "grid" }, perClass(record), confusion(record.files)),
      curves(history, record.best_epoch, metrics),
      samples(record.files, key),
      metricSections(record),
      historyTable(history),
      section("Provenance", fields(record, PROVENANCE)),
      otherFields(record, metrics),
      filesSection(record, key),
      section("Run spec", spec === null ? el("p", { "class": "empty" }, "No spec stored for this run.") : el("pre", { "class": "spec" }, spec))
    ]);
  }

  function show() {
    var view = document.getElementById("run-view");
    var list = document.querySelector(".run-records");
    if (!view || !list) return;
    view.textContent = "";
    var key = decodeURIComponent(location.hash.slice(1));
    var target = key ? document.getElementById(key) : null;
    if (!target || !target.classList.contains("run-record")) {
      list.hidden = false;
      return;
    }
    var record;
    try {
      record = expand(JSON.parse(target.querySelector("pre.record").textContent));
    } catch (e) {
      add(view, el("p", { "class": "notice" }, "The stored record of run " + key + " could not be read; it is shown as stored below."));
      list.hidden = false;
      return;
    }
    list.hidden = true;
    var metrics = JSON.parse(view.getAttribute("data-metrics") || "[]");
    var links = { dataset: target.getAttribute("data-dataset-href"), method: target.getAttribute("data-method-href") };
    draw(view, record, key, links, metrics);
    document.title = "run " + key + " \u00b7 " + document.title.replace(/^.*? \u00b7 /, "");
    window.scrollTo(0, 0);
  }

  document.addEventListener("DOMContentLoaded", show);
  window.addEventListener("hashchange", show);
})();

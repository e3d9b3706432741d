/* medpeft leaderboard: sorting and filtering of the tables already in the page.
 *
 * No libraries, no network. The server renders every table; this script only shows, hides and
 * reorders what is there, so the pages read the same with JavaScript off (filters are then hidden).
 * Conventions (set by the templates):
 *   form.filters select[data-filter=NAME]   a filter; value "" = all (for table views: the default view)
 *   [data-filtered][data-f-NAME=VALUE]        shown only when filter NAME is "" or VALUE
 *   tbody[data-view][data-view-NAME=VALUE]    one view of a table (NAME = fraction | metric); shown when
 *                                             it matches, or when the filter is "" and it has data-default-NAME
 *   table.sortable th[data-sort=num|text]     click to sort by that column (cells' data-v, else their text);
 *                                             rows with data-fixed (a view's caption) stay on top
 */
(function () {
  "use strict";

  function filterState() {
    var state = {};
    document.querySelectorAll("form.filters select[data-filter]").forEach(function (sel) {
      state[sel.getAttribute("data-filter")] = sel.value;
    });
    return state;
  }

  function matches(el, state) {
    for (var name in state) {
      var own = el.getAttribute("data-f-" + name);
      if (own !== null && state[name] !== "" && own !== state[name]) return false;
    }
    return true;
  }

  function viewMatches(el, state) {
    var names = ["fraction", "metric"];
    for (var i = 0; i < names.length; i++) {
      var name = names[i];
      if (!(name in state) || el.getAttribute("data-view-" + name) === null) continue;
      if (state[name] === "") {
        if (!el.hasAttribute("data-default-" + name)) return false;
      } else if (el.getAttribute("data-view-" + name) !== state[name]) {
        return false;
      }
    }
    return true;
  }

  function visible(el) {
    return !el.hidden && el.closest("[hidden]") === null;
  }

  // The filtered elements, grouped once: those inside a table view (filtered only while the view
  // is shown, which keeps a large overview fast) and all others.
  var groups = null;

  function collect() {
    var outside = [], views = new Map();
    document.querySelectorAll("tbody[data-view]").forEach(function (body) { views.set(body, []); });
    document.querySelectorAll("[data-filtered]").forEach(function (el) {
      var view = el.closest("tbody[data-view]");
      if (view) views.get(view).push(el);
      else outside.push(el);
    });
    return { outside: outside, views: views };
  }

  function apply() {
    var state = filterState();
    groups = groups || collect();
    var active = groups.outside.slice();
    groups.views.forEach(function (members, body) {
      body.hidden = !viewMatches(body, state);
      if (!body.hidden) active = active.concat(members);
    });
    active.forEach(function (el) { el.hidden = !matches(el, state); });
    document.querySelectorAll("[data-views]").forEach(function (box) {
      var shown = Array.prototype.some.call(box.querySelectorAll("tbody[data-view]"), function (b) { return !b.hidden; });
      box.querySelectorAll(".no-view").forEach(function (note) { note.hidden = shown; });
    });
    var outputs = document.querySelectorAll("output.filter-status");
    if (outputs.length) {
      var shown = 0, total = 0;
      active.forEach(function (el) {
        if (el.tagName !== "TR" || el.parentNode.hidden) return; // rows of the views that are shown
        total += 1;
        if (visible(el)) shown += 1;
      });
      outputs.forEach(function (out) { out.textContent = shown + " of " + total + " rows shown"; });
    }
  }

  function cellValue(row, index, numeric) {
    var cell = row.cells[index];
    if (!cell) return null;
    var raw = cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent.trim();
    if (raw === "" || raw === "\u2014") return null;
    if (!numeric) return raw.toLowerCase();
    var num = parseFloat(raw);
    return isNaN(num) ? null : num;
  }

  function sortBy(table, th, dir) {
    var index = Array.prototype.indexOf.call(th.parentNode.cells, th);
    var numeric = th.getAttribute("data-sort") === "num";
    Array.prototype.forEach.call(table.tBodies, function (body) {
      var rows = Array.prototype.filter.call(body.rows, function (r) { return !r.hasAttribute("data-fixed"); });
      var keyed = rows.map(function (r, i) { return { row: r, key: cellValue(r, index, numeric), i: i }; });
      keyed.sort(function (a, b) {
        if (a.key === null || b.key === null) return (a.key === null) - (b.key === null) || a.i - b.i;
        if (a.key < b.key) return -dir;
        if (a.key > b.key) return dir;
        return a.i - b.i;
      });
      var frag = document.createDocumentFragment();
      keyed.forEach(function (k) { frag.appendChild(k.row); });
      body.appendChild(frag);
    });
    table.querySelectorAll("th[aria-sort]").forEach(function (other) { other.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
  }

  function makeSortable(table) {
    table.querySelectorAll("thead th[data-sort]").forEach(function (th) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "sort";
      button.title = "sort by this column";
      if (th.querySelector("a")) {
        // a header that is also a link (a dataset): the link stays, a separate button sorts
        button.classList.add("icon");
        button.setAttribute("aria-label", "sort by " + th.textContent.trim());
      } else {
        while (th.firstChild) button.appendChild(th.firstChild);
      }
      th.appendChild(button);
      button.addEventListener("click", function () {
        var current = th.getAttribute("aria-sort");
        var first = th.getAttribute("data-sort-first") === "desc" ? -1 : 1;
        var dir = current === "ascending" ? -1 : current === "descending" ? 1 : first;
        sortBy(table, th, dir);
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.documentElement.classList.add("js");
    document.querySelectorAll("table.sortable").forEach(makeSortable);
    document.querySelectorAll("form.filters").forEach(function (form) {
      form.hidden = false;
      form.addEventListener("change", apply);
      form.addEventListener("submit", function (e) { e.preventDefault(); });
      form.addEventListener("reset", function () { setTimeout(apply, 0); });
    });
    apply();
  });
})();

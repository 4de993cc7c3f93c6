/* Issue 21: filter and sort the flagged list, copy waiver snippets. No network, no storage. */
(function () {
  "use strict";
  function number(el, name) { return parseFloat(el.getAttribute("data-" + name)); }

  function setupFilters() {
    var list = document.getElementById("flagged");
    var form = document.getElementById("flag-filters");
    if (!list || !form) { return; }
    var rows = Array.prototype.slice.call(list.querySelectorAll(".flag"));
    var kind = document.getElementById("filter-kind");
    var klass = document.getElementById("filter-class");
    var waived = document.getElementById("filter-waived");
    var sortBy = document.getElementById("sort-by");
    var shown = document.getElementById("flag-count");
    var orders = {
      order: function (a, b) { return number(a, "order") - number(b, "order"); },
      p: function (a, b) { return number(a, "p") - number(b, "p") || number(a, "order") - number(b, "order"); },
      count: function (a, b) { return number(b, "count") - number(a, "count") || number(a, "p") - number(b, "p") || number(a, "order") - number(b, "order"); }
    };
    function update() {
      var visible = 0;
      rows.forEach(function (row) {
        var ok = (!kind.value || row.getAttribute("data-kind") === kind.value) &&
                 (!klass || !klass.value || row.getAttribute("data-class") === klass.value) &&
                 (!waived.value || row.getAttribute("data-waived") === waived.value);
        row.hidden = !ok;
        if (ok) { visible += 1; }
      });
      rows.slice().sort(orders[sortBy.value]).forEach(function (row) { list.appendChild(row); });
      shown.textContent = visible + " of " + rows.length + " shown";
    }
    [kind, klass, waived, sortBy].forEach(function (el) { if (el) { el.addEventListener("change", update); } });
    form.addEventListener("submit", function (event) { event.preventDefault(); });
    form.hidden = false;
    update();
  }

  function fallbackCopy(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    if (!ok) { throw new Error("copy refused"); }
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () { fallbackCopy(text); });
    }
    return new Promise(function (resolve) { fallbackCopy(text); resolve(); });
  }

  function setupCopyButtons() {
    Array.prototype.forEach.call(document.querySelectorAll("button.copy"), function (button) {
      var box = button.closest(".snippet-box") || button.closest("td");
      var snippet = box && box.querySelector("pre.snippet");
      if (!snippet) { return; }
      button.hidden = false;
      button.addEventListener("click", function () {
        copyText(snippet.textContent).then(function () {
          button.textContent = "copied";
          button.setAttribute("data-copied", "yes");
        }).catch(function () {
          button.textContent = "select the text and copy it";
          window.getSelection().selectAllChildren(snippet);
        });
      });
    });
  }

  setupFilters();
  setupCopyButtons();
}());

// The version rows of the Deploy form and of the Configuration Updates tab
// (templates/services/_version_rows.html, in a form marked data-version-form).
// The server adds a row (htmx, so its specifications are those of the pool
// chosen now) and checks every rule on submit; this script only removes rows,
// adds and removes environment variables, renumbers the rows and shows what
// matters for one row or for several: with one row it takes all the traffic,
// so its ratio is 100 and hidden.
(function () {
  const form = document.querySelector("form[data-version-form]");
  const box = document.getElementById("version-rows");
  if (!form || !box) return;
  const addRow = document.getElementById("add-version-row");
  const total = document.getElementById("ratio-total");
  const maxRows = parseInt(box.dataset.maxRows, 10) || 10;

  function rows() {
    return Array.from(box.querySelectorAll(".version-row"));
  }

  function refresh() {
    const all = rows();
    const several = all.length > 1;
    all.forEach(function (row, index) {
      row.querySelector(".row-number").textContent = String(index + 1);
      row.setAttribute("aria-label", "Row " + (index + 1));
    });
    form.querySelectorAll("[data-several-only]").forEach(function (element) {
      // A field that shows an error stays in view, whatever the count.
      element.hidden = !several && !element.classList.contains("invalid");
    });
    if (all.length === 1) {
      const weight = all[0].querySelector("[data-weight]");
      if (!weight.closest(".field").classList.contains("invalid")) weight.value = "100";
    }
    if (addRow) addRow.hidden = all.length >= maxRows;
    updateTotal();
    syncWebsocket();
  }

  function updateTotal() {
    if (!total) return;
    let sum = 0;
    let isWhole = true;
    box.querySelectorAll("[data-weight]").forEach(function (input) {
      const text = input.value.trim();
      if (!/^\d+$/.test(text)) isWhole = false;
      else sum += parseInt(text, 10);
    });
    total.querySelector("output").textContent = isWhole ? String(sum) : "…";
    total.classList.toggle("off", !isWhole || sum !== 100);
  }

  // WebSocket is offered only when every chosen version is WebSocket-compliant.
  function syncWebsocket() {
    const field = document.getElementById("websocket-field");
    const checkbox = document.getElementById("id_websocket");
    if (!field || !checkbox) return;
    const selects = Array.from(box.querySelectorAll("[data-version-select]"));
    const compliant = selects.length > 0 && selects.every(function (select) {
      const option = select.options[select.selectedIndex];
      return option && option.dataset.websocket === "1";
    });
    field.hidden = !compliant;
    if (!compliant) checkbox.checked = false;
  }

  form.addEventListener("click", function (event) {
    const removeRow = event.target.closest("[data-remove-row]");
    if (removeRow) {
      if (rows().length < 2) return; // the last row stays
      const row = removeRow.closest(".version-row");
      const next = row.nextElementSibling || row.previousElementSibling;
      row.remove();
      refresh();
      if (next) next.querySelector("[data-version-select]").focus();
      return;
    }
    const removeEnv = event.target.closest("[data-remove-env]");
    if (removeEnv) {
      removeEnv.closest(".env-row").remove();
      return;
    }
    const addEnv = event.target.closest("[data-add-env]");
    if (addEnv) {
      const row = addEnv.closest(".version-row");
      const envRow = document.getElementById("env-row-template").content.firstElementChild.cloneNode(true);
      envRow.querySelectorAll("[data-name]").forEach(function (input) {
        input.name = row.dataset.prefix + input.dataset.name;
        input.removeAttribute("data-name");
      });
      row.querySelector(".env-rows").append(envRow);
      envRow.querySelector("input").focus();
    }
  });

  form.addEventListener("input", function (event) {
    if (event.target.matches("[data-weight]")) updateTotal();
  });
  form.addEventListener("change", function (event) {
    if (event.target.matches("[data-version-select]")) syncWebsocket();
  });

  // A row added by htmx: renumber, show the ratios, and start on its version.
  document.body.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target !== box) return;
    refresh();
    const added = rows().pop();
    if (added) added.querySelector("[data-version-select]").focus();
  });

  refresh();
})();

// Copy buttons: <button data-copy="#element-id"> copies that element's text.
// Delegated from the document, so buttons in fragments swapped in by htmx work too.
document.addEventListener("click", function (event) {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  if (!source) return;
  const text = source.value !== undefined ? source.value : source.textContent;
  const done = function () {
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(function () { button.textContent = label; }, 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, function () { fallback(); });
  } else {
    fallback();
  }
  // Plain-HTTP consoles have no clipboard API: select the text and copy it.
  function fallback() {
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    try { if (document.execCommand("copy")) done(); } catch (error) { /* the text stays selected */ }
  }
});

// Confirmations: <form data-confirm="What will happen…" data-confirm-action="Stop">
// asks once, in the page, before it is sent. A second click while the question
// is open does nothing; the answer is remembered only for that one submit.
document.addEventListener("submit", function (event) {
  const form = event.target.closest("form[data-confirm]");
  if (!form || form.dataset.confirmed === "yes") return;
  event.preventDefault();
  let dialog = document.getElementById("confirm-dialog");
  if (!dialog) {
    dialog = document.createElement("dialog");
    dialog.id = "confirm-dialog";
    dialog.className = "confirm-dialog";
    dialog.innerHTML = '<form method="dialog"><p class="confirm-text"></p>' +
      '<div class="confirm-buttons"><button value="cancel" class="button">Cancel</button>' +
      '<button value="ok" class="button confirm-ok"></button></div></form>';
    document.body.appendChild(dialog);
  }
  if (dialog.open) return;
  dialog.querySelector(".confirm-text").textContent = form.dataset.confirm;
  const ok = dialog.querySelector(".confirm-ok");
  ok.textContent = form.dataset.confirmAction || "OK";
  ok.classList.toggle("danger", form.dataset.confirmDanger === "yes");
  dialog.onclose = function () {
    if (dialog.returnValue !== "ok") return;
    form.dataset.confirmed = "yes";
    form.requestSubmit();
    delete form.dataset.confirmed;
  };
  dialog.showModal();
});

// Banners that announce a passing state ("is deploying", "checking its image")
// go once the page's live part stops polling: the state they announced is over.
document.addEventListener("htmx:afterSwap", function () {
  const live = document.querySelector("#list-poller, #service-live, #application-table");
  if (live && !live.hasAttribute("hx-trigger")) {
    document.querySelectorAll(".messages .message.transient").forEach(function (banner) { banner.remove(); });
  }
});

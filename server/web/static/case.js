// The case page: one key per action (shown on its button), a small dialog where the action needs
// a reason or a detail, then POST /api/v1/cases/{id}/actions. Opened from the review queue, the page
// goes on to the next case awaiting verification afterwards (or back to the queue); otherwise it
// reloads to show the new state and timeline.
"use strict";

(() => {
  const root = document.getElementById("case");
  if (!root) return;
  const { api } = curbwatch;
  const caseId = root.dataset.caseId;
  const actionError = document.getElementById("action-error");
  const buttons = [...root.querySelectorAll("button[data-action]")];
  let busy = false;

  function showError(target, message) {
    target.textContent = message;
    target.hidden = !message;
  }

  async function goOn() {
    const nextQuery = root.dataset.nextQuery;
    if (!nextQuery) {
      location.reload();
      return;
    }
    try {
      const page = await api("GET", `/api/v1/cases?${nextQuery}`);
      const next = page.items.find((item) => item.id !== caseId);
      location.assign(next ? `/cases/${encodeURIComponent(next.id)}${location.search}` : root.dataset.back);
    } catch {
      location.assign(root.dataset.back);
    }
  }

  // Sends the action; returns an error message, or null once it is done.
  async function act(body) {
    if (busy) return "";
    busy = true;
    for (const button of buttons) button.disabled = true;
    try {
      await api("POST", `/api/v1/cases/${encodeURIComponent(caseId)}/actions`, body);
      await goOn();
      return null;
    } catch (error) {
      for (const button of buttons) button.disabled = false;
      return error.message;
    } finally {
      busy = false;
    }
  }

  async function start(button) {
    const dialog = button.dataset.dialog && document.getElementById(button.dataset.dialog);
    if (!dialog) {
      showError(actionError, await act({ action: button.dataset.action }) || "");
      return;
    }
    const form = dialog.querySelector("form");
    form.reset();
    showError(form.querySelector(".notice"), "");
    dialog.showModal();
    const first = form.querySelector("input:not([type=radio]), select, input[type=radio]");
    if (first) first.focus();
  }

  for (const button of buttons) button.addEventListener("click", () => start(button));

  for (const dialog of root.querySelectorAll("dialog.action-dialog")) {
    const form = dialog.querySelector("form");
    const notice = form.querySelector(".notice");
    const radios = [...form.querySelectorAll("input[type=radio]")];

    dialog.addEventListener("keydown", (event) => {
      const typing = event.target.matches("input[type=text], textarea");
      if (!typing && /^[1-9]$/.test(event.key) && radios[Number(event.key) - 1]) {
        event.preventDefault();
        radios[Number(event.key) - 1].checked = true;
        radios[Number(event.key) - 1].focus();
      } else if (event.key === "Enter" && !event.target.matches("button, textarea")) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    form.querySelector("[data-cancel]").addEventListener("click", () => dialog.close());
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (!form.checkValidity()) {
        showError(notice, radios.length ? "Choose one of the options (press its number)." : "Fill in every field.");
        return;
      }
      const body = { action: form.dataset.action };
      for (const [name, value] of new FormData(form)) if (String(value).trim()) body[name] = String(value).trim();
      showError(notice, (await act(body)) || "");
    });
  }

  for (const frame of root.querySelectorAll("button.frame")) {
    frame.addEventListener("click", () => {
      document.getElementById("evidence-main").src = frame.dataset.src;
      for (const other of root.querySelectorAll("button.frame")) other.classList.toggle("current", other === frame);
    });
  }

  const byKey = new Map(buttons.map((button) => [button.dataset.key, button]));
  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey || event.repeat) return;
    if (document.querySelector("dialog[open]") || event.target.closest("input, select, textarea")) return;
    const button = byKey.get(event.key);
    if (button && !button.disabled) {
      // Keeps the key from reaching the field the dialog focuses.
      event.preventDefault();
      start(button);
    } else if (event.key === "q") {
      location.assign(root.dataset.back);
    }
  });
})();

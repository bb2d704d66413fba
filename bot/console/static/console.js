// Keyboard triage for the review console: no library, nothing sent anywhere but our own pages.
(function () {
  "use strict";
  const typing = (el) => el && (el.tagName === "TEXTAREA" || (el.tagName === "INPUT" && !["radio", "checkbox", "submit"].includes(el.type)) || el.tagName === "SELECT");
  let pendingG = false;

  // The queue: j/k to move, Enter to open.
  const queue = document.querySelector('[data-keys="queue"]');
  const rows = queue ? Array.from(queue.querySelectorAll("tbody tr[data-href]")) : [];
  let selected = rows.length ? 0 : -1;
  const select = (i) => {
    if (!rows.length) return;
    rows.forEach((r) => r.classList.remove("selected"));
    selected = Math.max(0, Math.min(rows.length - 1, i));
    rows[selected].classList.add("selected");
    rows[selected].scrollIntoView({ block: "nearest" });
  };
  if (rows.length) select(0);

  // A turn: 1-5 score, c/i/w/u/s verdict, n note, e correction, Ctrl+Enter save, j next.
  const turn = document.querySelector('[data-keys="turn"]');
  const form = document.getElementById("review");

  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (form && (event.ctrlKey || event.metaKey) && event.key === "Enter") {
      event.preventDefault();
      form.requestSubmit();
      return;
    }
    if (event.key === "Escape" && typing(target)) { target.blur(); return; }
    if (typing(target) || event.altKey || event.ctrlKey || event.metaKey) return;
    if (pendingG) {
      pendingG = false;
      if (event.key === "q") { location.href = "/console/queue"; return; }
      if (event.key === "d") { location.href = "/console/dashboard"; return; }
      if (event.key === "j") { location.href = "/console/jobs"; return; }
      if (event.key === "a") { location.href = "/console/adapters"; return; }
    }
    if (event.key === "g") { pendingG = true; return; }
    if (queue) {
      if (event.key === "j") { select(selected + 1); event.preventDefault(); }
      else if (event.key === "k") { select(selected - 1); event.preventDefault(); }
      else if (event.key === "Enter" && selected >= 0) { location.href = rows[selected].dataset.href; }
      return;
    }
    // A turn the viewer may not read has no form; j still moves on.
    if (turn && !form && event.key === "j" && turn.dataset.next) { location.href = turn.dataset.next; return; }
    if (turn && form) {
      if (/^[1-5]$/.test(event.key)) {
        form.querySelector(`input[name="score"][value="${event.key}"]`).checked = true;
      } else if ("ciwus".includes(event.key) && event.key.length === 1) {
        const radio = form.querySelector(`input[name="verdict"][data-key="${event.key}"]`);
        if (radio) radio.checked = true;
      } else if (event.key === "n") {
        event.preventDefault(); document.getElementById("note").focus();
      } else if (event.key === "e") {
        event.preventDefault(); document.getElementById("correction").focus();
      } else if (event.key === "j" && turn.dataset.next) {
        location.href = turn.dataset.next;
      }
    }
  });
})();

// Retraining jobs: while one is active its progress is polled every 2 s; when it ends the page
// reloads once, so the outcome, the dataset card and the report appear.
(function () {
  "use strict";
  const watched = Array.from(document.querySelectorAll("[data-poll]"));
  if (!watched.length) return;
  const set = (el, field, text) => { const f = el.querySelector(`[data-field="${field}"]`); if (f) f.textContent = text; };
  const timer = setInterval(() => {
    watched.forEach((el) => {
      fetch(el.dataset.poll, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
        .then((job) => {
          if (!job.active) { clearInterval(timer); location.reload(); return; }
          const status = el.querySelector('[data-field="status"]');
          if (status) { status.textContent = job.status; status.className = `tag ${job.status}`; }
          set(el, "stage", job.stage || "–");
          set(el, "percent", `${Math.round(job.progress * 100)}%`);
          const bar = el.querySelector("progress");
          if (bar) bar.value = job.progress;
        })
        .catch(() => clearInterval(timer));  // signed out or gone: stop asking
    });
  }, 2000);
})();

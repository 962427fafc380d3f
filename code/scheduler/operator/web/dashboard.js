// The scheduler dashboard: the action buttons and a periodic refresh of the #live section.
// The API token stays in this tab's sessionStorage only; it is sent as a bearer header,
// which a browser never attaches by itself, so other sites cannot make these calls (no CSRF).
(function () {
  "use strict";
  var KEY = "scheduler.apiToken";
  var REFRESH_MS = 3000;

  function token() { return sessionStorage.getItem(KEY) || ""; }

  function flash(text, ok) {
    var box = document.getElementById("flash");
    if (!box) { return; }
    box.textContent = "";
    var span = document.createElement("span");
    span.className = ok ? "ok" : "bad";
    span.textContent = text;
    box.appendChild(span);
  }

  function showTokenState() {
    var state = document.getElementById("token-state");
    if (state) { state.textContent = token() ? "token set for this tab" : "no token set"; }
  }

  function refresh() {
    var live = document.getElementById("live");
    if (!live) { return Promise.resolve(); }
    return fetch(location.pathname + location.search, { headers: { Accept: "text/html" } })
      // 503: the database is away; the page says so until it is back
      .then(function (r) { return r.ok || r.status === 503 ? r.text() : Promise.reject(new Error(r.status)); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        if (fresh) { live.replaceWith(fresh); }
      })
      .catch(function () { /* the daemon may be restarting: the next refresh tries again */ });
  }

  var done = { trigger: "queued a run of ", pause: "paused ", resume: "resumed " };

  function act(button) {
    var job = button.getAttribute("data-job");
    var action = button.getAttribute("data-action");
    if (!token()) {
      flash("Enter the API token first (SCHEDULER_API_TOKEN).", false);
      var input = document.getElementById("token");
      if (input) { input.focus(); }
      return;
    }
    button.disabled = true;
    fetch("/api/jobs/" + encodeURIComponent(job) + "/" + action, {
      method: "POST",
      headers: { Authorization: "Bearer " + token() }
    })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (body) {
          if (r.ok) {
            flash(done[action] + job + (body.run_id ? " (run #" + body.run_id + ")" : ""), true);
          } else {
            if (r.status === 401) { sessionStorage.removeItem(KEY); showTokenState(); }
            flash(body.error || ("HTTP " + r.status), false);
          }
        });
      })
      .catch(function (e) { flash("request failed: " + e.message, false); })
      .then(refresh)
      .then(function () { button.disabled = false; });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-action]");
    if (button) { act(button); }
  });

  var form = document.getElementById("token-form");
  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var input = document.getElementById("token");
      if (input.value.trim()) { sessionStorage.setItem(KEY, input.value.trim()); }
      input.value = "";
      showTokenState();
    });
    document.getElementById("token-forget").addEventListener("click", function () {
      sessionStorage.removeItem(KEY);
      showTokenState();
    });
  }
  // The jobs filter: a new state or sort applies at once, typed text after a pause.
  var filters = document.getElementById("filter-form");
  if (filters) {
    var typing = null;
    ["filter-state", "filter-sort"].forEach(function (id) {
      document.getElementById(id).addEventListener("change", function () { filters.submit(); });
    });
    var text = document.getElementById("filter-text");
    if (text.value) { text.focus(); text.setSelectionRange(text.value.length, text.value.length); }
    text.addEventListener("input", function () {
      clearTimeout(typing);
      typing = setTimeout(function () { filters.submit(); }, 600);
    });
  }

  showTokenState();
  if (document.getElementById("live")) {
    setInterval(function () { if (document.visibilityState === "visible") { refresh(); } }, REFRESH_MS);
  }
})();

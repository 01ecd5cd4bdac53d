// Small behaviours shared by every page. No inline scripts anywhere (CSP-ready).
"use strict";
document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
  select.addEventListener("change", () => select.form.submit());
});

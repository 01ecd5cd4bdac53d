// Debounce: call fn only after `wait` ms without a new call.
export function debounce(fn, wait = 250) {
  let timer = null;
  return function debounced(...args) {
    clearTimeout(timer);
    timer = setTimeout(() => fn.apply(this, args), wait);
  };
}

// Send the form data to the API and show the result.
export async function submitForm(form) {
  const body = JSON.stringify(Object.fromEntries(new FormData(form)));
  const res = await fetch("/api/v1/contact", {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Requested-With": "fetch" },
    body,
  });
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  return res.json();
}

const hidden = document.querySelector(".modal");
hidden.style.display = "none"; // closed until the user clicks "Open"
console.log("build 2025.11.25-1432, commit 3f2a9c1d");

// The customer's tracking page: the order's state comes as server-sent
// events from /track/<code>/events, at once and at every change.
"use strict";

const words = {
  "created": ["Order received", "We are finding a driver for your parcel."],
  "assigned": ["Driver assigned", "Your driver is picking up your parcel."],
  "in-transit": ["Out for delivery", "Your parcel is on its way."],
  "delivered": ["Delivered", "Your parcel was delivered. Thank you!"],
  "failed": ["Delivery attempt failed", ""],
  "returned": ["Returned to the store", "We could not deliver your parcel; it went back to the store."],
  "cancelled": ["Cancelled", "This delivery was cancelled by the store."],
};
const reasons = {
  "recipient-absent": "nobody was home",
  "address-not-found": "the driver could not find the address",
  "refused": "the parcel was refused",
  "damaged": "the parcel was damaged",
  "other": "the driver could not complete it",
};
const steps = ["created", "assigned", "in-transit", "delivered"];
const terminal = new Set(["delivered", "returned", "cancelled"]);

const $ = (id) => document.getElementById(id);

function when(t) {
  return new Date(t).toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit" });
}

function render(o) {
  document.body.dataset.status = o.status;
  const [title, detail] = words[o.status] || [o.status, ""];
  $("status").textContent = title;
  let d = detail;
  if (o.status === "failed") {
    const last = o.timeline[o.timeline.length - 1];
    d = "The driver could not deliver: " + (reasons[last && last.reason] || "unknown reason") + ".";
    d += o.attempt < o.maxAttempts ? " We will try again." : "";
  } else if (o.attempt > 1 && !terminal.has(o.status)) {
    d += " (attempt " + o.attempt + " of " + o.maxAttempts + ")";
  }
  $("detail").textContent = d;
  $("store").textContent = o.store;
  $("address").textContent = o.address;
  $("driver").textContent = o.driver || "Not assigned yet";
  $("pin-box").hidden = !o.pin || terminal.has(o.status);
  $("pin").textContent = o.pin || "";
  const at = steps.indexOf(o.status);
  for (const li of $("progress").children) {
    const i = steps.indexOf(li.dataset.step);
    li.classList.toggle("done", at >= 0 && i <= at);
    li.classList.toggle("current", i === Math.max(at, 0));
  }
  const tl = $("timeline");
  tl.replaceChildren(...o.timeline.slice().reverse().map((s) => {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.textContent = (words[s.status] || [s.status])[0] + (s.reason ? " (" + (reasons[s.reason] || s.reason) + ")" : "");
    const time = document.createElement("time");
    time.dateTime = s.time;
    time.textContent = when(s.time);
    li.append(label, time);
    li.dataset.status = s.status;
    return li;
  }));
}

function connect() {
  const code = location.pathname.split("/").filter(Boolean).pop();
  const es = new EventSource("/track/" + encodeURIComponent(code) + "/events");
  es.onopen = () => { $("live").textContent = "Live: this page updates by itself."; };
  es.onmessage = (e) => {
    const o = JSON.parse(e.data);
    render(o);
    if (terminal.has(o.status)) {
      es.close();
      $("live").textContent = "";
    }
  };
  es.onerror = () => { $("live").textContent = "Reconnecting…"; };
}

connect();

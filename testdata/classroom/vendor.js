// A classroom-style CAPS vendor, written the way the Node.js classroom
// exercise wrote it: only `net` and `JSON`, each order written with
// socket.write(JSON.stringify({event, payload})), each 'data' chunk parsed
// with JSON.parse. The Go tests run it against the Go hub.
//
// Usage: node vendor.js [host:port]   (default: $CAPS_HUB or localhost:3000)
// Environment:
//   STORE     the store's name (default 1-206-flowers)
//   INTERVAL  milliseconds between orders (default 5000)
//   ORDERS    post this many orders, then exit 0 once all are delivered
//             (default 0: post forever)
'use strict';

const net = require('net');
const crypto = require('crypto');

const [host, port] = (process.argv[2] || process.env.CAPS_HUB || 'localhost:3000').split(':');
const store = process.env.STORE || '1-206-flowers';
const interval = Number(process.env.INTERVAL || 5000);
const orders = Number(process.env.ORDERS || 0);

const customers = ['Ada Lovelace', 'Grace Hopper', 'Alan Turing', 'Edsger Dijkstra', 'Barbara Liskov'];
const streets = ['Main St', 'Pine Ave', 'Harbor Rd', 'Elm Ct', 'Lake Blvd'];
const pick = (list) => list[Math.floor(Math.random() * list.length)];

const mine = new Set();
const thanked = new Set();
let posted = 0;

const socket = net.connect(Number(port || 3000), host || 'localhost');

const timer = setInterval(() => {
  if (orders && posted >= orders) {
    return;
  }
  const order = {
    store,
    orderID: crypto.randomUUID(),
    customer: pick(customers),
    address: `${1 + Math.floor(Math.random() * 999)} ${pick(streets)}`,
  };
  posted++;
  mine.add(order.orderID);
  console.log(`VENDOR: posted ${order.orderID}`);
  socket.write(JSON.stringify({ event: 'pickup', payload: order }));
}, interval);

socket.on('data', (chunk) => {
  const message = JSON.parse(chunk);
  if (message.event === 'delivered') {
    console.log(`VENDOR: Thank you for delivering ${message.payload.orderID}`);
    thanked.add(message.payload.orderID);
    if (orders && posted >= orders && [...mine].every((id) => thanked.has(id))) {
      clearInterval(timer);
      socket.end();
    }
  } else if (message.event === 'error') {
    console.error(`VENDOR: hub error ${JSON.stringify(message.payload)}`);
  }
});

socket.on('error', (err) => {
  console.error(`VENDOR: ${err.message}`);
  process.exit(1);
});

socket.on('close', () => {
  clearInterval(timer);
  const done = orders && [...mine].every((id) => thanked.has(id));
  process.exit(done ? 0 : 1);
});

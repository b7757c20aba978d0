// A classroom-style CAPS driver, written the way the Node.js classroom
// exercise wrote it: only `net` and `JSON`, each 'data' chunk parsed with
// JSON.parse, and the answers written with socket.write(JSON.stringify(…)).
// It never writes anything before it is given a pickup. The Go tests run it
// against the Go hub.
//
// Usage: node driver.js [host:port]   (default: $CAPS_HUB or localhost:3000)
// Environment:
//   PICKUP_DELAY   milliseconds from pickup to in-transit (default 1000)
//   DELIVER_DELAY  milliseconds from in-transit to delivered (default 3000)
'use strict';

const net = require('net');

const [host, port] = (process.argv[2] || process.env.CAPS_HUB || 'localhost:3000').split(':');
const pickupDelay = Number(process.env.PICKUP_DELAY || 1000);
const deliverDelay = Number(process.env.DELIVER_DELAY || 3000);

const socket = net.connect(Number(port || 3000), host || 'localhost');

socket.on('data', (chunk) => {
  const message = JSON.parse(chunk);
  if (message.event === 'pickup') {
    const order = message.payload;
    setTimeout(() => {
      console.log(`DRIVER: picked up ${order.orderID}`);
      socket.write(JSON.stringify({ event: 'in-transit', payload: order }));
      setTimeout(() => {
        console.log(`DRIVER: delivered ${order.orderID}`);
        socket.write(JSON.stringify({ event: 'delivered', payload: order }));
      }, deliverDelay);
    }, pickupDelay);
  } else if (message.event === 'error') {
    console.error(`DRIVER: hub error ${JSON.stringify(message.payload)}`);
  }
});

socket.on('error', (err) => {
  console.error(`DRIVER: ${err.message}`);
  process.exit(1);
});

socket.on('close', () => process.exit(0));

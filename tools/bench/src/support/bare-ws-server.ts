// A bare `ws` server, the baseline of the relay's sockets: a plain HTTP
// server (any GET answers 200, for spawnUntilReady) with a WebSocketServer
// on it, `ws`'s defaults (no permessage-deflate), no authentication, no
// per-socket state. Started as a child process: node bare-ws-server.js, with
// PORT in the environment.
import { createServer } from 'node:http';
import { WebSocketServer } from 'ws';

const port = Number(process.env.PORT);
if (!Number.isInteger(port) || port <= 0) throw new Error('PORT must be a port number');

const server = createServer((_request, response) => response.writeHead(200).end('ok'));
const sockets = new WebSocketServer({ server });
sockets.on('connection', (socket) => socket.on('error', () => undefined));
server.listen(port, '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));

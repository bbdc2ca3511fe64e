// The baseline of the relay throughput scenario, run as a child process of its
// own like the relay: a plain `ws` server that forwards every frame of
// /pair/<n>/sender to /pair/<n>/receiver and back, with no authentication, no
// parsing and no storage. It listens on 127.0.0.1:$PORT and answers any plain
// HTTP request with 200, so that it is started like the relay (ready when it answers).
import { createServer } from 'node:http';
import { WebSocketServer, type WebSocket } from 'ws';

const PATH = /^\/pair\/(\d+)\/(sender|receiver)$/;

const ends = new Map<string, { sender?: WebSocket; receiver?: WebSocket }>();
const server = createServer((_request, response) => {
  response.writeHead(200, { 'Content-Type': 'text/plain' }).end('ok');
});
const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 512 * 1024 });

wss.on('connection', (socket, request) => {
  const match = PATH.exec(request.url ?? '');
  if (!match) {
    socket.close(1008, 'unknown path');
    return;
  }
  const [, pair, role] = match as unknown as [string, string, 'sender' | 'receiver'];
  const entry = ends.get(pair) ?? {};
  entry[role] = socket;
  ends.set(pair, entry);
  const other: 'sender' | 'receiver' = role === 'sender' ? 'receiver' : 'sender';
  socket.on('message', (data: Buffer, isBinary: boolean) => {
    const peer = entry[other];
    if (peer && peer.readyState === peer.OPEN) peer.send(data, { binary: isBinary });
  });
  socket.on('close', () => {
    if (entry[role] === socket) delete entry[role];
  });
});

server.listen(Number(process.env.PORT), '127.0.0.1');

const stop = () => {
  for (const socket of wss.clients) socket.terminate();
  server.close(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

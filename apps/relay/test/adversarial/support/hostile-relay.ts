/**
 * A compromised relay for the adversarial suite: an in-process proxy in front
 * of the real relay that a client uses as its `relayUrl`. HTTP goes through a
 * rewriting proxy (`rewrite` may replace a JSON answer, e.g. a prekey bundle
 * with another identity key); the WebSocket is terminated here, so that every
 * frame can be seen and tampered with:
 *
 * - server to client `message` frames go through `onDeliver`, which decides
 *   to pass, drop (and ack it upstream, so the real relay forgets it: a relay
 *   that silently discards), duplicate, hold until released, hold until the
 *   next message passes (reorder) or delay it;
 * - `replay()` sends an envelope seen before again under a new envelope id,
 *   as a relay replaying stored ciphertext would;
 * - client to server frames go through `onClientFrame`, which may answer a
 *   frame itself instead of forwarding it (e.g. refuse a send with 410, or
 *   keep a message and confirm it as if stored).
 *
 * The upstream socket carries the client's own Authorization header, so the
 * real relay authenticates the client; an upgrade the relay refuses is
 * refused to the client with the same status. Acks for envelopes the proxy
 * made up, and repeated acks, are not forwarded.
 */
import { randomUUID } from 'node:crypto';
import { createServer, request as httpRequest, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import WebSocket, { WebSocketServer, type RawData } from 'ws';
import { ClientFrameType, ServerFrameType, type ClientFrame, type Envelope, type ServerFrame } from '@chat/protocol';
import { startRewritingProxy, type AnswerRewrite } from '../../support/rewriting-proxy.js';
import type { TestRelay } from '../../support/test-relay.js';

/** What the hostile relay does with one `message` frame on its way to the client. */
export type DeliverAction =
  | 'pass'
  /** Never delivered; acked upstream, so the relay deletes it. */
  | 'drop'
  /** Delivered twice, same frame. */
  | 'duplicate'
  /** Kept until `release(id)` or `releaseAll()`. */
  | 'hold'
  /** Kept until the next message frame to this client has passed: the two arrive swapped. */
  | 'hold-until-next'
  | { delayMs: number };

/** What the hostile relay does with a frame from the client: forward it, or answer it itself (nothing goes upstream). */
export type ClientFrameAction = 'forward' | { answer: ServerFrame };

export interface HostileRelayOptions {
  rewrite?: AnswerRewrite;
  onDeliver?: (envelope: Envelope) => DeliverAction;
  onClientFrame?: (frame: ClientFrame) => ClientFrameAction;
}

export interface HostileRelay {
  /** `http://127.0.0.1:<port>`: the client's `relayUrl`. */
  readonly baseUrl: string;
  /** Replaces a JSON answer of an HTTP request (return undefined to pass it on); replace it at any time. */
  rewrite: AnswerRewrite;
  /** Decides per message frame; replace it at any time. */
  onDeliver: (envelope: Envelope) => DeliverAction;
  onClientFrame: (frame: ClientFrame) => ClientFrameAction;
  /** Every envelope the real relay delivered through this proxy, in order (also the dropped and held ones). */
  readonly delivered: Envelope[];
  /** Every frame a client sent, in order (also the ones answered here). */
  readonly clientFrames: ClientFrame[];
  /** Every HTTP request that went through, in order (WebSocket upgrades not included). */
  readonly requests: ReadonlyArray<{ method: string; path: string }>;
  /** Ids of the envelopes dropped (and acked upstream). */
  readonly dropped: string[];
  /** Ids of the envelopes held now (also those whose socket closed meanwhile). */
  held(): string[];
  /** Delivers a held envelope now; one held for a socket that has closed goes to every open one. */
  release(id: string): void;
  releaseAll(): void;
  /** Delivers `envelope` again to every open client socket, under a new id (returned), with nothing stored upstream. */
  replay(envelope: Envelope): string;
  close(): Promise<void>;
}

interface Connection {
  client: WebSocket;
  upstream: WebSocket;
  held: Map<string, { frame: ServerFrame; timer?: NodeJS.Timeout }>;
  /** An envelope waiting for the next message frame to pass (reorder). */
  waitingForNext: string | null;
  ackedUpstream: Set<string>;
}

export async function startHostileRelay(relay: Pick<TestRelay, 'baseUrl' | 'wsUrl'>, options: HostileRelayOptions = {}): Promise<HostileRelay> {
  const http = await startRewritingProxy(relay, (answer) => hostile.rewrite(answer));
  const httpTarget = new URL(http.baseUrl);
  const connections = new Set<Connection>();
  const sockets = new Set<Socket>();
  /** Ids this proxy made up (replays): never acked upstream. */
  const fabricated = new Set<string>();
  /** Frames held for a socket that closed before they were let go. */
  const orphans = new Map<string, ServerFrame>();
  const wss = new WebSocketServer({ noServer: true, maxPayload: 16 * 1024 * 1024 });

  const hostile: HostileRelay = {
    baseUrl: '',
    rewrite: options.rewrite ?? (() => undefined),
    onDeliver: options.onDeliver ?? (() => 'pass'),
    onClientFrame: options.onClientFrame ?? (() => 'forward'),
    delivered: [],
    clientFrames: [],
    requests: http.requests,
    dropped: [],
    held: () => [...[...connections].flatMap((connection) => [...connection.held.keys()]), ...orphans.keys()],
    release(id) {
      for (const connection of connections) releaseHeld(connection, id);
      const orphan = orphans.get(id);
      if (!orphan) return;
      orphans.delete(id);
      for (const connection of connections) send(connection.client, orphan);
    },
    releaseAll() {
      for (const id of hostile.held()) hostile.release(id);
    },
    replay(envelope) {
      const id = randomUUID();
      fabricated.add(id);
      for (const connection of connections) send(connection.client, { type: ServerFrameType.Message, envelope: { ...envelope, id } });
      return id;
    },
    close: async () => {
      for (const connection of connections) {
        for (const { timer } of connection.held.values()) clearTimeout(timer);
        connection.client.terminate();
        connection.upstream.terminate();
      }
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await http.close();
    },
  };

  function send(socket: WebSocket, frame: unknown): void {
    if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
  }

  function ackUpstream(connection: Connection, id: string): void {
    if (fabricated.has(id) || connection.ackedUpstream.has(id)) return;
    connection.ackedUpstream.add(id);
    send(connection.upstream, { type: ClientFrameType.Ack, id });
  }

  function releaseHeld(connection: Connection, id: string): void {
    const held = connection.held.get(id);
    if (!held) return;
    clearTimeout(held.timer);
    connection.held.delete(id);
    send(connection.client, held.frame);
  }

  function onServerFrame(connection: Connection, frame: ServerFrame): void {
    if (frame.type !== ServerFrameType.Message) {
      send(connection.client, frame);
      return;
    }
    const { envelope } = frame;
    hostile.delivered.push(envelope);
    const action = hostile.onDeliver(envelope);
    const previous = connection.waitingForNext;
    if (action === 'drop') {
      hostile.dropped.push(envelope.id);
      ackUpstream(connection, envelope.id);
    } else if (action === 'hold' || action === 'hold-until-next') {
      connection.held.set(envelope.id, { frame });
      if (action === 'hold-until-next') connection.waitingForNext = envelope.id;
    } else if (typeof action === 'object') {
      const timer = setTimeout(() => releaseHeld(connection, envelope.id), action.delayMs);
      connection.held.set(envelope.id, { frame, timer });
    } else {
      send(connection.client, frame);
      if (action === 'duplicate') send(connection.client, frame);
    }
    // A frame held for reordering goes right after the next one that was let through.
    if (previous !== null && previous !== envelope.id && action !== 'hold' && action !== 'hold-until-next') {
      connection.waitingForNext = null;
      releaseHeld(connection, previous);
    }
  }

  function onClientFrame(connection: Connection, frame: ClientFrame): void {
    hostile.clientFrames.push(frame);
    const action = hostile.onClientFrame(frame);
    if (action !== 'forward') {
      send(connection.client, action.answer);
      return;
    }
    if (frame?.type === ClientFrameType.Ack) {
      ackUpstream(connection, frame.id);
      return;
    }
    send(connection.upstream, frame);
  }

  const parse = (data: RawData): unknown => JSON.parse(Buffer.isBuffer(data) ? data.toString('utf8') : Buffer.from(data as ArrayBuffer).toString('utf8'));

  const server: Server = createServer((incoming, outgoing) => {
    const upstream = httpRequest(
      { host: httpTarget.hostname, port: httpTarget.port, method: incoming.method, path: incoming.url, headers: incoming.headers },
      (answer) => {
        outgoing.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(outgoing);
      },
    );
    upstream.on('error', () => {
      outgoing.writeHead(502);
      outgoing.end();
    });
    incoming.pipe(upstream);
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  server.on('upgrade', (incoming: IncomingMessage, raw: Socket, head: Buffer) => {
    const headers: Record<string, string> = {};
    if (incoming.headers.authorization) headers.authorization = incoming.headers.authorization;
    const upstream = new WebSocket(`${relay.wsUrl.replace(/\/v1\/ws$/, '')}${incoming.url ?? '/'}`, { headers, maxPayload: 16 * 1024 * 1024 });
    upstream.once('unexpected-response', (_request, response) => {
      // The relay refused the upgrade (401, 429...): the client gets the same answer.
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        const body = Buffer.concat(chunks);
        const lines = [`HTTP/1.1 ${response.statusCode} ${response.statusMessage ?? ''}`];
        for (const [name, value] of Object.entries(response.headers)) {
          if (name === 'transfer-encoding' || name === 'connection' || value === undefined) continue;
          lines.push(`${name}: ${name === 'content-length' ? body.length : Array.isArray(value) ? value.join(', ') : value}`);
        }
        lines.push('connection: close');
        raw.end(Buffer.concat([Buffer.from(`${lines.join('\r\n')}\r\n\r\n`), body]));
      });
    });
    upstream.once('error', () => raw.destroy());
    upstream.once('open', () => {
      wss.handleUpgrade(incoming, raw, head, (client) => {
        const connection: Connection = { client, upstream, held: new Map(), waitingForNext: null, ackedUpstream: new Set() };
        connections.add(connection);
        upstream.on('message', (data) => onServerFrame(connection, parse(data) as ServerFrame));
        client.on('message', (data) => onClientFrame(connection, parse(data) as ClientFrame));
        upstream.on('close', (code, reason) => client.close(sendableCloseCode(code), reason));
        client.on('close', () => {
          for (const [id, { frame, timer }] of connection.held) {
            clearTimeout(timer);
            orphans.set(id, frame);
          }
          connection.held.clear();
          connections.delete(connection);
          upstream.close();
        });
        client.on('error', () => undefined);
        upstream.on('error', () => undefined);
      });
    });
  });

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  (hostile as { baseUrl: string }).baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return hostile;
}

/** A close code the client may be sent: the relay's own, or 1011 for the ones that only describe a dropped connection (1005, 1006). */
function sendableCloseCode(code: number): number {
  const sendable = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
  return sendable ? code : 1011;
}

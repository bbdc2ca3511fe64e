/**
 * An in-process HTTP and WebSocket proxy in front of a test relay, standing
 * for a relay (or a network) that lies: it forwards every request and
 * WebSocket upgrade unchanged, except that `rewrite` may replace the JSON
 * answer of an HTTP request. Clients use it as their `relayUrl`, so the SDK's
 * real transport is what gets tested.
 *
 *   const proxy = await startRewritingProxy(relay, ({ method, path, body }) => ...);
 *   SecureChatClient.create({ relayUrl: proxy.baseUrl });
 *   await proxy.close();
 */
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import type { TestRelay } from './test-relay.js';

export interface ProxiedAnswer {
  method: string;
  /** The request path, query included. */
  path: string;
  status: number;
  /** The answer's parsed JSON, or undefined when it had none. */
  body: unknown;
}

/** Returns the JSON to answer with instead, or undefined to pass the answer on unchanged. */
export type AnswerRewrite = (answer: ProxiedAnswer) => unknown;

export interface RewritingProxy {
  /** `http://127.0.0.1:<port>` */
  baseUrl: string;
  /** Every request that went through, in order. */
  readonly requests: Array<{ method: string; path: string }>;
  close(): Promise<void>;
}

export async function startRewritingProxy(relay: Pick<TestRelay, 'baseUrl'>, rewrite: AnswerRewrite): Promise<RewritingProxy> {
  const target = new URL(relay.baseUrl);
  const requests: Array<{ method: string; path: string }> = [];
  const sockets = new Set<Socket>();

  const server: Server = createServer((incoming: IncomingMessage, outgoing: ServerResponse) => {
    const method = incoming.method ?? 'GET';
    const path = incoming.url ?? '/';
    requests.push({ method, path });
    const upstream = httpRequest(
      { host: target.hostname, port: target.port, method, path, headers: incoming.headers },
      (answer) => {
        const chunks: Buffer[] = [];
        answer.on('data', (chunk: Buffer) => chunks.push(chunk));
        answer.on('end', () => {
          const raw = Buffer.concat(chunks);
          let body: unknown;
          try {
            body = raw.length > 0 ? JSON.parse(raw.toString('utf8')) : undefined;
          } catch {
            body = undefined;
          }
          const status = answer.statusCode ?? 502;
          const replaced = body === undefined ? undefined : rewrite({ method, path, status, body });
          const payload = replaced === undefined ? raw : Buffer.from(JSON.stringify(replaced), 'utf8');
          const headers = { ...answer.headers, 'content-length': String(payload.length) };
          outgoing.writeHead(status, headers);
          outgoing.end(payload);
        });
      },
    );
    upstream.on('error', () => {
      outgoing.writeHead(502);
      outgoing.end();
    });
    incoming.pipe(upstream);
  });

  // WebSocket upgrades are passed through byte for byte.
  server.on('upgrade', (incoming: IncomingMessage, client: Socket, head: Buffer) => {
    requests.push({ method: 'UPGRADE', path: incoming.url ?? '/' });
    const upstream = connect(Number(target.port), target.hostname, () => {
      const lines = [`${incoming.method} ${incoming.url} HTTP/${incoming.httpVersion}`];
      for (let i = 0; i < incoming.rawHeaders.length; i += 2) lines.push(`${incoming.rawHeaders[i]}: ${incoming.rawHeaders[i + 1]}`);
      upstream.write(`${lines.join('\r\n')}\r\n\r\n`);
      if (head.length > 0) upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
  });
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    baseUrl: `http://127.0.0.1:${port}`,
    requests,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

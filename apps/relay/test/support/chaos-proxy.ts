/**
 * A TCP proxy in front of a relay that drops connections on request, as a
 * flaky network does: clients use `baseUrl`; `dropRandom` destroys one open
 * connection (both directions, no close frame: the WebSocket sees 1006),
 * `dropAll` every one. A connection whose relay side cannot be reached (the
 * relay is down) is destroyed at once. It outlives relay restarts, and
 * `retarget` points new connections at another relay, as a load balancer
 * does when an instance is gone. In front of a dependency (the database,
 * Redis), `cut` takes it away: every open connection is destroyed and new
 * ones are reset on accept, as a host that is down resets them, until
 * `restore`.
 */
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';

export interface ChaosProxy {
  /** `http://127.0.0.1:<port>` */
  readonly baseUrl: string;
  /** Connections dropped on purpose so far. */
  readonly dropped: number;
  /** Destroys one open connection chosen with `random` (uniform in [0, 1)); false when none is open. */
  dropRandom(random: () => number): boolean;
  dropAll(): void;
  /** The port the proxy listens on. */
  readonly port: number;
  /** New connections go to `port` from now on; open ones stay where they are. */
  retarget(port: number): void;
  /** Destroys every open connection and resets new ones until `restore`. */
  cut(): void;
  restore(): void;
  close(): Promise<void>;
}

export async function startChaosProxy(initialTargetPort: number, targetHost = '127.0.0.1'): Promise<ChaosProxy> {
  let targetPort = initialTargetPort;
  const pairs = new Set<{ client: Socket; upstream: Socket }>();
  let dropped = 0;
  let isCut = false;
  const server = createServer((client) => {
    if (isCut) {
      client.destroy();
      return;
    }
    const upstream = connect({ host: targetHost, port: targetPort });
    const pair = { client, upstream };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const destroy = (pair: { client: Socket; upstream: Socket }) => {
    pairs.delete(pair);
    pair.client.destroy();
    pair.upstream.destroy();
    dropped++;
  };
  return {
    baseUrl: `http://127.0.0.1:${port}`,
    port,
    get dropped() {
      return dropped;
    },
    dropRandom(random) {
      const open = [...pairs];
      const pair = open[Math.floor(random() * open.length)];
      if (!pair) return false;
      destroy(pair);
      return true;
    },
    dropAll() {
      for (const pair of [...pairs]) destroy(pair);
    },
    retarget(port) {
      targetPort = port;
    },
    cut() {
      isCut = true;
      for (const pair of [...pairs]) destroy(pair);
    },
    restore() {
      isCut = false;
    },
    async close() {
      isCut = true;
      for (const pair of [...pairs]) destroy(pair);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

// Reads another Node process's memory the same way for the relay and for a
// baseline server: the process runs with `--inspect=127.0.0.1:<port>`, and a
// reading forces a full garbage collection through the inspector protocol
// (HeapProfiler.collectGarbage) and then takes process.memoryUsage() inside
// that process, so the heap figure is live objects only. No code of the
// measured process changes for it.
import WebSocket from 'ws';

export interface MemoryReading {
  /** Resident set size, bytes (process.memoryUsage().rss: VmRSS of /proc/self/status). */
  rss: number;
  /** V8 heap in use after a full GC, bytes. */
  heapUsed: number;
  /** Memory of C++ objects bound to JS objects (Buffers among them), bytes. */
  external: number;
  arrayBuffers: number;
}

/** The node flag that opens the inspector on `port` (loopback only). */
export const inspectFlag = (port: number): string => `--inspect=127.0.0.1:${port}`;

interface InspectorTarget {
  webSocketDebuggerUrl: string;
}

/** One inspector connection to a process started with `inspectFlag(port)`. */
export class InspectorClient {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (result: unknown) => void; reject: (error: Error) => void }>();

  private constructor(private readonly socket: WebSocket) {
    socket.on('message', (data: Buffer) => {
      const message = JSON.parse(data.toString('utf8')) as { id?: number; result?: unknown; error?: { message: string } };
      if (message.id === undefined) return;
      const waiter = this.pending.get(message.id);
      if (!waiter) return;
      this.pending.delete(message.id);
      if (message.error) waiter.reject(new Error(`inspector: ${message.error.message}`));
      else waiter.resolve(message.result);
    });
    socket.on('close', () => {
      for (const waiter of this.pending.values()) waiter.reject(new Error('inspector: the connection closed'));
      this.pending.clear();
    });
  }

  /** Connects to the first target of the process whose inspector listens on `port`. */
  static async connect(port: number, timeoutMs = 10_000): Promise<InspectorClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const response = await fetch(`http://127.0.0.1:${port}/json/list`);
        const [target] = (await response.json()) as InspectorTarget[];
        if (target) {
          const socket = new WebSocket(target.webSocketDebuggerUrl, { perMessageDeflate: false });
          await new Promise<void>((resolve, reject) => {
            socket.once('open', resolve);
            socket.once('error', reject);
          });
          return new InspectorClient(socket);
        }
      } catch (error) {
        if (Date.now() > deadline) throw new Error(`no inspector on port ${port}: ${(error as Error).message}`);
      }
      if (Date.now() > deadline) throw new Error(`no inspector target on port ${port}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  call<T = unknown>(method: string, params: Record<string, unknown> = {}): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (result: unknown) => void, reject });
      this.socket.send(JSON.stringify({ id, method, params }));
    });
  }

  /**
   * Memory after full collections. Two collections, a short pause, then the
   * reading: the second collection catches what the first one's finalizers freed.
   */
  async readMemory(): Promise<MemoryReading> {
    await this.call('HeapProfiler.collectGarbage');
    await new Promise((resolve) => setTimeout(resolve, 200));
    await this.call('HeapProfiler.collectGarbage');
    const { result } = await this.call<{ result: { value: string } }>('Runtime.evaluate', {
      expression: 'JSON.stringify(process.memoryUsage())',
      returnByValue: true,
    });
    const usage = JSON.parse(result.value) as MemoryReading;
    return { rss: usage.rss, heapUsed: usage.heapUsed, external: usage.external, arrayBuffers: usage.arrayBuffers };
  }

  close(): void {
    this.socket.close();
  }
}

import { describe, expect, it } from '@jest/globals';
import { CloseCode, EnvelopeType, ErrorCode, ServerFrameType, type Envelope, type ServerFrame } from '@chat/protocol';
import { DeliveryService } from './delivery.service.js';
import { DeviceConnection, type DeviceNotice, type FrameSocket, type QueueSource } from './device-connection.js';

class FakeSocket implements FrameSocket {
  readyState = 1;
  bufferedAmount = 0;
  frames: ServerFrame[] = [];
  closedWith?: [number | undefined, string | undefined];
  send(data: string): void {
    this.frames.push(JSON.parse(data) as ServerFrame);
  }
  close(code?: number, reason?: string): void {
    this.closedWith = [code, reason];
    this.readyState = 3;
  }
  get sentIds(): string[] {
    return this.frames.map((f) => (f.type === ServerFrameType.Message ? f.envelope.id : f.type));
  }
}

const envelope = (id: string): Envelope => ({
  id,
  source: 'alice',
  sourceDevice: 1,
  type: EnvelopeType.Signal,
  ciphertext: 'AA==',
  serverTimestamp: 0,
});

/** A device's queue as the database holds it: rows by seq, deleted on ack. Counts reads and what they asked for. */
class FakeQueue implements QueueSource {
  rows: Array<{ seq: number; id: string }> = [];
  reads: Array<{ excluding: string[]; limit: number }> = [];
  notice: DeviceNotice | null = null;
  failWith?: Error;
  /** When set, reads wait for `release()`. */
  private gate?: { promise: Promise<void>; open: () => void };

  store(id: string, seq = (this.rows.at(-1)?.seq ?? 0) + 1): void {
    this.rows.push({ seq, id });
    this.rows.sort((a, b) => a.seq - b.seq);
  }
  delete(id: string): void {
    this.rows = this.rows.filter((row) => row.id !== id);
  }
  hold(): void {
    let open!: () => void;
    const promise = new Promise<void>((resolve) => (open = resolve));
    this.gate = { promise, open };
  }
  release(): void {
    const gate = this.gate;
    this.gate = undefined;
    gate?.open();
  }
  async read(excluding: readonly string[], limit: number): Promise<Envelope[]> {
    this.reads.push({ excluding: [...excluding], limit });
    // The snapshot is taken when the query runs, before any wait.
    const snapshot = this.rows.filter((row) => !excluding.includes(row.id)).slice(0, limit);
    if (this.gate) await this.gate.promise;
    if (this.failWith) throw this.failWith;
    return snapshot.map((row) => envelope(row.id));
  }
  async connectNotice(): Promise<DeviceNotice | null> {
    return this.notice;
  }
}

/** Lets the connection's pending reads (resolved promises) run to completion. */
const settle = async () => {
  for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
};

function connected(window: number, queue = new FakeQueue()) {
  const socket = new FakeSocket();
  const delivery = new DeliveryService();
  const failures: unknown[] = [];
  const connection = new DeviceConnection('row-1', 'acc-1', socket, 1, { source: queue, window, onFailure: (e) => failures.push(e) });
  delivery.attach(connection);
  /** What the relay does on an ack: delete the row, then free the slot. */
  const ack = (id: string) => {
    queue.delete(id);
    delivery.acked('row-1', id);
  };
  return { socket, delivery, connection, queue, ack, failures };
}

describe('DeviceConnection delivery window', () => {
  it('sends at most `window` unacked messages and reads the next ones as acks free slots', async () => {
    const { socket, connection, queue, ack } = connected(2);
    for (const id of ['a', 'b', 'c', 'd', 'e']) queue.store(id);
    connection.start();
    await settle();
    expect(socket.sentIds).toEqual(['a', 'b']);
    expect(connection.stats()).toMatchObject({ inFlight: 2, window: 2, queueEmptySent: false });

    ack('a');
    await settle();
    expect(socket.sentIds).toEqual(['a', 'b', 'c']);
    expect(queue.reads.at(-1)).toEqual({ excluding: ['b'], limit: 1 });

    for (const id of ['b', 'c', 'd', 'e']) {
      ack(id);
      await settle();
    }
    expect(socket.sentIds).toEqual(['a', 'b', 'c', 'd', 'e', 'queue-empty']);
    expect(connection.stats().inFlight).toBe(0);
  });

  it('does not read while the window is full, however many messages are stored', async () => {
    const { socket, delivery, connection, queue } = connected(3);
    connection.start();
    await settle();
    for (let i = 0; i < 50; i++) {
      queue.store(`m${i}`);
      delivery.notify('row-1');
      await settle();
    }
    const readsWhenFull = queue.reads.length;
    for (let i = 50; i < 60; i++) {
      queue.store(`m${i}`);
      delivery.notify('row-1');
    }
    await settle();
    expect(socket.sentIds).toEqual(['queue-empty', 'm0', 'm1', 'm2']);
    expect(queue.reads.length).toBe(readsWhenFull);
    expect(connection.stats().inFlight).toBe(3);
  });

  it('sends queue-empty once, the first time a read finds less than it had room for', async () => {
    const { socket, delivery, connection, queue, ack } = connected(2);
    queue.store('a');
    queue.store('b');
    connection.start();
    await settle();
    expect(socket.sentIds).toEqual(['a', 'b']); // a full read does not know the queue is empty
    ack('a');
    ack('b');
    await settle();
    queue.store('c');
    delivery.notify('row-1');
    await settle();
    ack('c');
    await settle();
    expect(socket.sentIds).toEqual(['a', 'b', 'queue-empty', 'c']);
  });

  it('reads again when woken during a read, so a message stored meanwhile is sent', async () => {
    const { socket, delivery, connection, queue } = connected(10);
    queue.store('a');
    queue.hold();
    connection.start();
    await settle();
    queue.store('b'); // committed after the read took its snapshot
    delivery.notify('row-1');
    queue.release();
    await settle();
    expect(socket.sentIds).toEqual(['a', 'queue-empty', 'b']);
  });

  it('sends a row that committed late with a lower seq than one already sent, and nothing twice', async () => {
    const { socket, delivery, connection, queue } = connected(10);
    queue.store('late-high', 5);
    connection.start();
    await settle();
    queue.store('early-low', 3); // its transaction began first but committed second
    delivery.notify('row-1');
    await settle();
    delivery.notify('row-1');
    await settle();
    expect(socket.sentIds).toEqual(['late-high', 'queue-empty', 'early-low']);
    expect(queue.reads.at(-1)?.excluding.sort()).toEqual(['early-low', 'late-high']);
  });

  it('ignores wake-ups before start and acks of ids it did not send', async () => {
    const { socket, delivery, connection, queue } = connected(1);
    queue.store('a');
    delivery.notify('row-1');
    await settle();
    expect(queue.reads).toEqual([]);
    connection.start();
    await settle();
    delivery.acked('row-1', 'never-sent');
    await settle();
    expect(socket.sentIds).toEqual(['a']);
    expect(queue.reads).toHaveLength(1);
  });

  it('reports a failed read and stops', async () => {
    const { connection, queue, failures } = connected(1);
    queue.failWith = new Error('database down');
    connection.start();
    await settle();
    expect(failures).toEqual([queue.failWith]);
  });

  it('sends ephemeral envelopes at once, outside the window, and drops them while the socket is backed up', async () => {
    const { socket, delivery, connection, queue } = connected(1);
    queue.store('a');
    connection.start();
    await settle();
    expect(delivery.deliverEphemeral('row-1', { ...envelope('typing-1'), ephemeral: true })).toBe(true);
    socket.bufferedAmount = 10 * 1024 * 1024;
    expect(delivery.deliverEphemeral('row-1', { ...envelope('typing-2'), ephemeral: true })).toBe(false);
    expect(delivery.deliverEphemeral('row-2', { ...envelope('typing-3'), ephemeral: true })).toBe(false);
    expect(socket.sentIds).toEqual(['a', 'typing-1']);
    expect(connection.stats()).toMatchObject({ inFlight: 1, bufferedAmount: 10 * 1024 * 1024 });
  });

  it('does not push to a closed socket', async () => {
    const { socket, delivery, connection, queue } = connected(5);
    connection.start();
    await settle();
    socket.readyState = 3;
    queue.store('a');
    delivery.notify('row-1');
    await settle();
    expect(socket.sentIds).toEqual(['queue-empty']);
  });
});

describe('device notices', () => {
  const keysLow = { type: ServerFrameType.KeysLow, preKeys: 3, kyberPreKeys: 25, threshold: 20 } as const;

  it('keeps the latest notice until queue-empty, then pushes notices at once', async () => {
    const { socket, delivery, connection, queue, ack } = connected(1);
    queue.store('a');
    connection.start();
    await settle();
    delivery.notice('row-1', { ...keysLow, preKeys: 9 });
    delivery.notice('row-1', keysLow);
    ack('a');
    await settle();
    delivery.notice('row-1', keysLow);
    expect(socket.frames.map((f) => f.type)).toEqual(['message', 'queue-empty', 'keys-low', 'keys-low']);
    expect(socket.frames[2]).toEqual(keysLow);
  });

  it('sends the connect notice right after queue-empty, superseding a pushed one of its kind', async () => {
    const queue = new FakeQueue();
    queue.notice = keysLow;
    const { socket, delivery, connection } = connected(1, queue);
    delivery.notice('row-1', { ...keysLow, preKeys: 4 });
    connection.start();
    await settle();
    expect(socket.frames).toEqual([{ type: ServerFrameType.QueueEmpty }, keysLow]);
  });

  it('drops a notice for a device that is not connected here', async () => {
    const { socket, delivery, connection } = connected(1);
    connection.start();
    await settle();
    delivery.notice('row-2', keysLow);
    expect(socket.sentIds).toEqual(['queue-empty']);
  });
});

describe('DeliveryService connection registry', () => {
  it('closes the older connection of a device with 4409, whichever attaches first', () => {
    const delivery = new DeliveryService();
    const older = new FakeSocket();
    const newer = new FakeSocket();
    expect(delivery.attach(new DeviceConnection('row-1', 'acc-1', newer, 2))).toBe(true);
    expect(delivery.attach(new DeviceConnection('row-1', 'acc-1', older, 1))).toBe(false);
    expect(older.closedWith).toEqual([CloseCode.ConnectionReplaced, 'CONNECTION_REPLACED']);
    expect(newer.closedWith).toBeUndefined();

    const newest = new FakeSocket();
    delivery.attach(new DeviceConnection('row-1', 'acc-1', newest, 3));
    expect(newer.closedWith?.[0]).toBe(CloseCode.ConnectionReplaced);
  });

  it('keeps the newer connection registered when the replaced one detaches', async () => {
    const delivery = new DeliveryService();
    const queue = new FakeQueue();
    const first = new DeviceConnection('row-1', 'acc-1', new FakeSocket(), 1, { source: queue });
    const secondSocket = new FakeSocket();
    const second = new DeviceConnection('row-1', 'acc-1', secondSocket, 2, { source: queue });
    delivery.attach(first);
    delivery.attach(second);
    second.start();
    delivery.detach(first);
    queue.store('x');
    delivery.notify('row-1');
    await settle();
    expect(secondSocket.sentIds).toEqual(['queue-empty', 'x']);
    expect(delivery.stats()).toEqual([expect.objectContaining({ deviceRowId: 'row-1', inFlight: 1 })]);
    delivery.detach(second);
    expect(delivery.isConnected('row-1')).toBe(false);
    expect(delivery.stats()).toEqual([]);
  });

  it("closes every socket of an account with the given code and leaves other accounts' sockets open", () => {
    const delivery = new DeliveryService();
    const [phone, laptop, stranger] = [new FakeSocket(), new FakeSocket(), new FakeSocket()];
    delivery.attach(new DeviceConnection('row-1', 'acc-1', phone, 1));
    delivery.attach(new DeviceConnection('row-2', 'acc-1', laptop, 2));
    delivery.attach(new DeviceConnection('row-3', 'acc-2', stranger, 3));
    delivery.closeAccount('acc-1', CloseCode.CredentialsChanged, ErrorCode.CredentialsChanged);
    expect(phone.closedWith).toEqual([CloseCode.CredentialsChanged, 'CREDENTIALS_CHANGED']);
    expect(laptop.closedWith).toEqual([CloseCode.CredentialsChanged, 'CREDENTIALS_CHANGED']);
    expect(stranger.closedWith).toBeUndefined();
  });
});

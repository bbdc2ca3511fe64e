import { describe, expect, it } from '@jest/globals';
import { CloseCode, EnvelopeType, ErrorCode, ServerFrameType, type Envelope, type ServerFrame } from '@chat/protocol';
import { DeliveryBus, topicOf, type BusEvent } from '../bus/delivery-bus.js';
import { InProcessDeliveryBus } from '../bus/in-process-delivery-bus.js';
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

function connected(window: number, queue = new FakeQueue(), everyStoreHanded = false) {
  const socket = new FakeSocket();
  const delivery = new DeliveryService(new InProcessDeliveryBus());
  const failures: unknown[] = [];
  const connection = new DeviceConnection('row-1', 'acc-1', socket, 1, {
    source: queue,
    window,
    onFailure: (e) => failures.push(e),
    everyStoreHanded,
  });
  void delivery.attach(connection);
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
    delivery.deliverEphemeral('row-1', { ...envelope('typing-1'), ephemeral: true });
    socket.bufferedAmount = 10 * 1024 * 1024;
    delivery.deliverEphemeral('row-1', { ...envelope('typing-2'), ephemeral: true });
    delivery.deliverEphemeral('row-2', { ...envelope('typing-3'), ephemeral: true });
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

describe('DeviceConnection, caught up: stored messages without a read', () => {
  /** What the relay does on a send: store the row, then hand the envelope to delivery. */
  const storeAndHand = (queue: FakeQueue, delivery: DeliveryService, id: string) => {
    queue.store(id);
    delivery.stored('row-1', envelope(id));
  };

  it('sends a message stored after queue-empty as handed, without reading, and frees its slot on ack without reading', async () => {
    const { socket, delivery, connection, queue, ack } = connected(3, new FakeQueue(), true);
    connection.start();
    await settle();
    const readsWhenCaughtUp = queue.reads.length;
    storeAndHand(queue, delivery, 'a');
    storeAndHand(queue, delivery, 'b');
    expect(socket.sentIds).toEqual(['queue-empty', 'a', 'b']);
    ack('a');
    ack('b');
    storeAndHand(queue, delivery, 'c');
    await settle();
    expect(socket.sentIds).toEqual(['queue-empty', 'a', 'b', 'c']);
    expect(queue.reads.length).toBe(readsWhenCaughtUp);
  });

  it('leaves a message that does not fit the window in the queue, and reads it, in order, once acks free slots', async () => {
    const { socket, delivery, connection, queue, ack } = connected(2, new FakeQueue(), true);
    connection.start();
    await settle();
    for (const id of ['a', 'b', 'c', 'd']) storeAndHand(queue, delivery, id);
    await settle();
    expect(socket.sentIds).toEqual(['queue-empty', 'a', 'b']);
    ack('a');
    await settle();
    // No longer caught up: the ack reads, and a message handed meanwhile waits its turn behind `c` and `d`.
    storeAndHand(queue, delivery, 'e');
    ack('b');
    await settle();
    ack('c');
    await settle();
    ack('d');
    await settle();
    expect(socket.sentIds).toEqual(['queue-empty', 'a', 'b', 'c', 'd', 'e']);
  });

  it('reads instead while a read is under way, and after a plain wake-up (a message it was not handed)', async () => {
    const { socket, delivery, connection, queue } = connected(5, new FakeQueue(), true);
    connection.start();
    await settle();
    queue.store('sealed');
    delivery.notify('row-1');
    queue.hold();
    storeAndHand(queue, delivery, 'a');
    expect(socket.sentIds).toEqual(['queue-empty']);
    queue.release();
    await settle();
    expect(socket.sentIds).toEqual(['queue-empty', 'sealed', 'a']);
    storeAndHand(queue, delivery, 'b');
    expect(socket.sentIds).toEqual(['queue-empty', 'sealed', 'a', 'b']);
  });

  it('reads on every ack and every stored message when not every store is handed to it (several relay instances)', async () => {
    const { socket, delivery, connection, queue, ack } = connected(3);
    connection.start();
    await settle();
    const readsWhenEmpty = queue.reads.length;
    storeAndHand(queue, delivery, 'a');
    expect(socket.sentIds).toEqual(['queue-empty']);
    await settle();
    expect(socket.sentIds).toEqual(['queue-empty', 'a']);
    ack('a');
    await settle();
    expect(queue.reads.length).toBe(readsWhenEmpty + 2);
  });

  it('takes nothing handed before start or before queue-empty without reading: the stored queue comes first', async () => {
    const { socket, delivery, connection, queue } = connected(5, new FakeQueue(), true);
    storeAndHand(queue, delivery, 'early');
    expect(socket.sentIds).toEqual([]);
    queue.store('older');
    connection.start();
    await settle();
    expect(socket.sentIds).toEqual(['early', 'older', 'queue-empty']);
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
  it('closes the older connection of a device with 4409, whichever attaches first', async () => {
    const delivery = new DeliveryService(new InProcessDeliveryBus());
    const older = new FakeSocket();
    const newer = new FakeSocket();
    expect(await delivery.attach(new DeviceConnection('row-1', 'acc-1', newer, 2))).toBe(true);
    expect(await delivery.attach(new DeviceConnection('row-1', 'acc-1', older, 1))).toBe(false);
    expect(older.closedWith).toEqual([CloseCode.ConnectionReplaced, 'CONNECTION_REPLACED']);
    expect(newer.closedWith).toBeUndefined();

    const newest = new FakeSocket();
    expect(await delivery.attach(new DeviceConnection('row-1', 'acc-1', newest, 3))).toBe(true);
    expect(newer.closedWith?.[0]).toBe(CloseCode.ConnectionReplaced);
  });

  it('keeps the newer connection registered when the replaced one detaches', async () => {
    const delivery = new DeliveryService(new InProcessDeliveryBus());
    const queue = new FakeQueue();
    const first = new DeviceConnection('row-1', 'acc-1', new FakeSocket(), 1, { source: queue });
    const secondSocket = new FakeSocket();
    const second = new DeviceConnection('row-1', 'acc-1', secondSocket, 2, { source: queue });
    await delivery.attach(first);
    await delivery.attach(second);
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

  it("closes every socket of an account with the given code and leaves other accounts' sockets open", async () => {
    const delivery = new DeliveryService(new InProcessDeliveryBus());
    const [phone, laptop, stranger] = [new FakeSocket(), new FakeSocket(), new FakeSocket()];
    await delivery.attach(new DeviceConnection('row-1', 'acc-1', phone, 1));
    await delivery.attach(new DeviceConnection('row-2', 'acc-1', laptop, 2));
    await delivery.attach(new DeviceConnection('row-3', 'acc-2', stranger, 3));
    delivery.closeAccount('acc-1', CloseCode.CredentialsChanged, ErrorCode.CredentialsChanged);
    expect(phone.closedWith).toEqual([CloseCode.CredentialsChanged, 'CREDENTIALS_CHANGED']);
    expect(laptop.closedWith).toEqual([CloseCode.CredentialsChanged, 'CREDENTIALS_CHANGED']);
    expect(stranger.closedWith).toBeUndefined();
  });
});

/**
 * Two instances' buses joined as Redis joins them: an event reaches this
 * instance's handler at once and the other's later (when `flush` runs),
 * only if the other is subscribed to its topic then.
 */
class LinkedBus extends DeliveryBus {
  override readonly singleInstance = false;
  peer?: LinkedBus;
  readonly topics = new Map<string, number>();
  private readonly inbox: BusEvent[] = [];
  private handle: (event: BusEvent) => void = () => undefined;
  private generation = 0;
  override onEvent(handler: (event: BusEvent) => void): void {
    this.handle = handler;
  }
  override publish(event: BusEvent): Promise<void> {
    this.handle(event);
    if (this.peer && (this.peer.topics.get(topicOf(event)) ?? 0) > 0) this.peer.inbox.push(event);
    return Promise.resolve();
  }
  override async subscribe(topics: readonly string[]): Promise<void> {
    for (const topic of topics) this.topics.set(topic, (this.topics.get(topic) ?? 0) + 1);
  }
  override async unsubscribe(topics: readonly string[]): Promise<void> {
    for (const topic of topics) this.topics.set(topic, (this.topics.get(topic) ?? 1) - 1);
  }
  override onResync(): void {
    return undefined;
  }
  override async nextGeneration(): Promise<number> {
    return ++this.generation;
  }
  override ping(): Promise<void> {
    return Promise.resolve();
  }
  override close(): Promise<void> {
    return Promise.resolve();
  }
  /** Delivers what the peer published to this instance, until both inboxes are empty. */
  static flush(...buses: LinkedBus[]): void {
    while (buses.some((bus) => bus.inbox.length > 0)) {
      for (const bus of buses) for (const event of bus.inbox.splice(0)) bus.handle(event);
    }
  }
}

describe('DeliveryService across instances (a bus between two of them)', () => {
  function twoInstances() {
    const busA = new LinkedBus();
    const busB = new LinkedBus();
    busA.peer = busB;
    busB.peer = busA;
    return { busA, busB, a: new DeliveryService(busA), b: new DeliveryService(busB) };
  }

  it('closes the older connection on the other instance with 4409, whichever attaches first', async () => {
    for (const newerFirst of [false, true]) {
      const { busA, busB, a, b } = twoInstances();
      const [olderSocket, newerSocket] = [new FakeSocket(), new FakeSocket()];
      const older = () => a.attach(new DeviceConnection('row-1', 'acc-1', olderSocket, 1));
      const newer = () => b.attach(new DeviceConnection('row-1', 'acc-1', newerSocket, 2));
      if (newerFirst) {
        await newer();
        await older();
      } else {
        await older();
        await newer();
      }
      LinkedBus.flush(busA, busB);
      expect(olderSocket.closedWith).toEqual([CloseCode.ConnectionReplaced, 'CONNECTION_REPLACED']);
      expect(newerSocket.closedWith).toBeUndefined();
    }
  });

  it('hands a stored message to the other instance as a wake-up: its connection reads the queue, on every ack too', async () => {
    const { busA, busB, a, b } = twoInstances();
    const queue = new FakeQueue();
    const socket = new FakeSocket();
    const connection = new DeviceConnection('row-1', 'acc-1', socket, 1, { source: queue, window: 5, everyStoreHanded: a.everyStoreHanded });
    await a.attach(connection);
    connection.start();
    await settle();
    queue.store('m1');
    b.stored('row-1', envelope('m1'));
    LinkedBus.flush(busA, busB);
    await settle();
    expect(socket.sentIds).toEqual(['queue-empty', 'm1']);
    // An instance that committed `m2` and died before publishing: the next ack's read still finds it.
    queue.store('m2');
    queue.delete('m1');
    a.acked('row-1', 'm1');
    await settle();
    expect(socket.sentIds).toEqual(['queue-empty', 'm1', 'm2']);
  });

  it('routes wake-ups, acks, ephemeral envelopes, notices and closes to the instance that holds the socket', async () => {
    const { busA, busB, a, b } = twoInstances();
    const queue = new FakeQueue();
    const socket = new FakeSocket();
    const connection = new DeviceConnection('row-1', 'acc-1', socket, 1, { source: queue, window: 1 });
    await a.attach(connection);
    connection.start();
    await settle();
    queue.store('m1');
    queue.store('m2');
    b.notify('row-1');
    LinkedBus.flush(busA, busB);
    await settle();
    expect(socket.sentIds).toEqual(['queue-empty', 'm1']);
    queue.delete('m1');
    b.acked('row-1', 'm1'); // an HTTP ack that reached B
    b.deliverEphemeral('row-1', { ...envelope('typing'), ephemeral: true });
    b.notice('row-1', { type: ServerFrameType.KeysLow, preKeys: 1, kyberPreKeys: 1, threshold: 20 });
    LinkedBus.flush(busA, busB);
    await settle();
    expect(socket.sentIds).toEqual(['queue-empty', 'm1', 'typing', 'keys-low', 'm2']);
    b.closeAccount('acc-1', CloseCode.CredentialsChanged, ErrorCode.CredentialsChanged);
    LinkedBus.flush(busA, busB);
    expect(socket.closedWith).toEqual([CloseCode.CredentialsChanged, 'CREDENTIALS_CHANGED']);

    a.detach(connection);
    expect([...busA.topics.values()]).toEqual([0, 0]);
  });

  it('closes an unlinked device on the other instance', async () => {
    const { busA, busB, a, b } = twoInstances();
    const socket = new FakeSocket();
    await a.attach(new DeviceConnection('row-1', 'acc-1', socket, 1));
    b.closeDevice('row-1', CloseCode.DeviceUnlinked, ErrorCode.DeviceUnlinked);
    LinkedBus.flush(busA, busB);
    expect(socket.closedWith).toEqual([CloseCode.DeviceUnlinked, 'DEVICE_UNLINKED']);
  });
});

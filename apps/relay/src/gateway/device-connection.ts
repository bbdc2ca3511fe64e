import {
  DEFAULT_MAX_INFLIGHT_DELIVERIES,
  ServerFrameType,
  type Envelope,
  type KeysLowFrame,
  type ServerFrame,
} from '@chat/protocol';

/** A frame the relay pushes to a device of its own accord that is not an envelope. */
export type DeviceNotice = KeysLowFrame;

/** The part of a `ws` WebSocket a device connection uses; a fake in unit specs. */
export interface FrameSocket {
  readonly readyState: number;
  /** Bytes queued in the process for the socket and not yet handed to the kernel (ws's `bufferedAmount`). */
  readonly bufferedAmount?: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** Where a connection reads its device's stored queue. */
export interface QueueSource {
  /** The device's oldest stored envelopes other than `excluding`, at most `limit`, in queue (seq) order. */
  read(excluding: readonly string[], limit: number): Promise<Envelope[]>;
  /** The notice sent right behind `queue-empty` when the device should act on it (keys-low), read just before. */
  connectNotice(): Promise<DeviceNotice | null>;
}

export interface DeviceConnectionOptions {
  source?: QueueSource;
  /** Message frames sent and not yet acked, at most. */
  window?: number;
  /** Reading the queue failed; the connection is of no further use (the gateway closes it with 1011). */
  onFailure?: (error: unknown) => void;
  /** A stored envelope was written to the socket (metrics). */
  onDelivered?: (envelope: Envelope) => void;
  /**
   * Every message stored for the device is handed to this connection with
   * `deliverStored` as it commits (one relay instance, see
   * `DeliveryBus.singleInstance`): while caught up it skips reads. Default false.
   */
  everyStoreHanded?: boolean;
  /** Called before each frame is written: the gateway holds the socket's writes to the end of the tick (`holdWritesUntilTickEnd`). */
  beforeSend?: () => void;
}

/** What a connection holds, for tests and metrics. */
export interface ConnectionStats {
  deviceRowId: string;
  /** Message frames sent and not yet acked. */
  inFlight: number;
  window: number;
  /** Bytes the socket holds in this process, not yet written to the kernel. */
  bufferedAmount: number;
  queueEmptySent: boolean;
  /** A queue read is under way. */
  reading: boolean;
}

const OPEN = 1;

/**
 * Ephemeral frames are dropped, not queued, once the socket holds this many
 * bytes: they are best-effort and must not grow a slow reader's buffer.
 */
const EPHEMERAL_BUFFER_LIMIT_BYTES = 256 * 1024;

const EMPTY_QUEUE: QueueSource = { read: async () => [], connectNotice: async () => null };

/**
 * One device's live socket and its delivery window. The connection never
 * holds envelopes of its own: it keeps the ids of the message frames it has
 * sent and that are not acked yet (at most `window`), and whenever there is
 * room and something may have changed (it started, a message was stored for
 * the device, an ack freed a slot) it reads from the database the device's
 * oldest messages that are not in flight, as many as fit. So a reader that
 * stops reading or acking costs at most `window` frames, whatever its queue
 * holds; a message is sent at most once per connection (in flight is
 * excluded from reads, and an ack releases its id only after the row is
 * deleted); and a row that committed after a later one is read all the same.
 *
 * One shortcut skips the database when every message stored for the device
 * is handed to the connection as it commits (`everyStoreHanded`: one relay
 * instance): while the connection is caught up (its last read found fewer
 * messages than it had room for, and nothing was stored for the device since
 * that it was not handed), every stored message of the
 * device is in flight here, so a message stored now is sent as it was
 * committed (`deliverStored`) if the window has room, and an ack needs no
 * read. A message it cannot take at once, and any plain wake-up, ends the
 * shortcut until a read catches up again.
 *
 * `queue-empty` is sent once, the first time a read finds fewer messages
 * than it had room for; notices wait for it, one per kind, the latest kept.
 */
export class DeviceConnection {
  readonly window: number;
  private readonly source: QueueSource;
  private readonly onFailure: (error: unknown) => void;
  private readonly onDelivered?: (envelope: Envelope) => void;
  private readonly beforeSend?: () => void;
  private readonly everyStoreHanded: boolean;
  private readonly inFlight = new Set<string>();
  private readonly pendingNotices = new Map<DeviceNotice['type'], DeviceNotice>();
  private started = false;
  private reading = false;
  /** Woken while a read was under way: read again when it ends. */
  private wokenWhileReading = false;
  private queueEmptySent = false;
  /** Every stored message of the device is in flight here (see the class comment). */
  private caughtUp = false;

  constructor(
    readonly deviceRowId: string,
    /** The account the device belongs to, so that all of an account's sockets can be closed at once. */
    readonly accountId: string,
    readonly socket: FrameSocket,
    /** Order in which the handshakes completed, across instances: of two sockets of one device, the higher one is kept. */
    readonly generation: number,
    options: DeviceConnectionOptions = {},
  ) {
    this.source = options.source ?? EMPTY_QUEUE;
    this.window = options.window ?? DEFAULT_MAX_INFLIGHT_DELIVERIES;
    this.onFailure = options.onFailure ?? (() => this.close(1011, 'INTERNAL'));
    this.onDelivered = options.onDelivered;
    this.beforeSend = options.beforeSend;
    this.everyStoreHanded = options.everyStoreHanded ?? false;
  }

  get isOpen(): boolean {
    return this.socket.readyState === OPEN;
  }

  send(frame: ServerFrame): void {
    if (!this.isOpen) return;
    this.beforeSend?.();
    this.socket.send(JSON.stringify(frame));
  }

  /** Begins sending the stored queue. Until then, wake-ups are ignored. */
  start(): void {
    this.started = true;
    this.wake();
  }

  /** Something may have been stored for the device, or a slot of the window freed: read what fits. */
  wake(): void {
    if (!this.started) return;
    this.caughtUp = false;
    if (this.reading) {
      this.wokenWhileReading = true;
      return;
    }
    this.reading = true;
    this.fillWindow().then(
      () => {
        this.reading = false;
      },
      (error: unknown) => {
        this.reading = false;
        this.onFailure(error);
      },
    );
  }

  /**
   * A message for the device was just stored (committed), with its
   * envelope: sent now when the connection is caught up and has room, else
   * a wake-up (the message is read in its turn).
   */
  deliverStored(envelope: Envelope): void {
    if (!this.started) return;
    if (this.caughtUp && this.isOpen && this.inFlight.size < this.window) {
      this.inFlight.add(envelope.id);
      this.send({ type: ServerFrameType.Message, envelope });
      this.onDelivered?.(envelope);
      return;
    }
    this.wake();
  }

  /** The message is deleted (acked, or swept): its slot in the window is free, and read into unless caught up. */
  acked(id: string): void {
    if (this.inFlight.delete(id) && !this.caughtUp) this.wake();
  }

  /** An ephemeral envelope: sent now if the socket is keeping up, else dropped. Returns whether it was sent. */
  sendEphemeral(envelope: Envelope): boolean {
    if (!this.isOpen || (this.socket.bufferedAmount ?? 0) > EPHEMERAL_BUFFER_LIMIT_BYTES) return false;
    this.send({ type: ServerFrameType.Message, envelope });
    return true;
  }

  deliverNotice(notice: DeviceNotice): void {
    if (this.queueEmptySent) this.send(notice);
    else this.pendingNotices.set(notice.type, notice);
  }

  close(code: number, reason: string): void {
    this.socket.close(code, reason);
  }

  stats(): ConnectionStats {
    return {
      deviceRowId: this.deviceRowId,
      inFlight: this.inFlight.size,
      window: this.window,
      bufferedAmount: this.socket.bufferedAmount ?? 0,
      queueEmptySent: this.queueEmptySent,
      reading: this.reading,
    };
  }

  /** Reads and sends until the window is full or a read finds nothing more, and again while woken meanwhile. */
  private async fillWindow(): Promise<void> {
    let readAll: boolean;
    do {
      this.wokenWhileReading = false;
      readAll = false;
      if (!this.isOpen) return;
      const room = this.window - this.inFlight.size;
      if (room <= 0) continue;
      const envelopes = await this.source.read([...this.inFlight], room);
      if (!this.isOpen) return;
      for (const envelope of envelopes) {
        this.inFlight.add(envelope.id);
        this.send({ type: ServerFrameType.Message, envelope });
        this.onDelivered?.(envelope);
      }
      readAll = envelopes.length < room;
      if (readAll && !this.queueEmptySent) await this.finishQueue();
    } while (this.wokenWhileReading);
    // Nothing was stored since the read began without waking it again: what the device has stored is in flight.
    this.caughtUp = readAll && this.everyStoreHanded;
  }

  /**
   * `queue-empty`, then the connect notice if any, else the notices pushed
   * meanwhile. The connect notice is read before `queue-empty` so that a
   * client that has read the frame after it knows whether it got one, and it
   * supersedes pushed notices of its kind (it is fresher).
   */
  private async finishQueue(): Promise<void> {
    const connectNotice = await this.source.connectNotice();
    if (connectNotice) this.pendingNotices.set(connectNotice.type, connectNotice);
    this.queueEmptySent = true;
    this.send({ type: ServerFrameType.QueueEmpty });
    for (const notice of this.pendingNotices.values()) this.send(notice);
    this.pendingNotices.clear();
  }
}

import { ServerFrameType, type Envelope, type ServerFrame } from '@chat/protocol';

/** The part of a `ws` WebSocket a device connection uses; a fake in unit specs. */
export interface FrameSocket {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

const OPEN = 1;

/**
 * One device's live socket. Until the stored queue has been sent it holds
 * back live envelopes, then sends those the queue did not already carry: a
 * message stored while the queue is read reaches the device exactly once,
 * whichever of the two paths saw it.
 */
export class DeviceConnection {
  private draining = true;
  private readonly heldBack: Envelope[] = [];
  private readonly sentFromQueue = new Set<string>();

  constructor(
    readonly deviceRowId: string,
    /** The account the device belongs to, so that all of an account's sockets can be closed at once. */
    readonly accountId: string,
    readonly socket: FrameSocket,
    /** Order in which the handshakes completed: of two sockets of one device, the higher one is kept. */
    readonly sequence: number,
  ) {}

  get isOpen(): boolean {
    return this.socket.readyState === OPEN;
  }

  send(frame: ServerFrame): void {
    if (this.isOpen) this.socket.send(JSON.stringify(frame));
  }

  /** A stored message read from the queue. */
  sendQueued(envelope: Envelope): void {
    this.sentFromQueue.add(envelope.id);
    this.send({ type: ServerFrameType.Message, envelope });
  }

  /** A message stored after this connection was registered. */
  deliverLive(envelope: Envelope): void {
    if (this.draining) this.heldBack.push(envelope);
    else this.send({ type: ServerFrameType.Message, envelope });
  }

  /** Ends the queue: `queue-empty`, then the held-back live messages not sent already. */
  finishQueue(): void {
    this.send({ type: ServerFrameType.QueueEmpty });
    this.draining = false;
    for (const envelope of this.heldBack.splice(0)) {
      if (!this.sentFromQueue.has(envelope.id)) this.send({ type: ServerFrameType.Message, envelope });
    }
    this.sentFromQueue.clear();
  }

  close(code: number, reason: string): void {
    this.socket.close(code, reason);
  }
}

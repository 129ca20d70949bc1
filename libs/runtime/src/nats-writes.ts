/**
 * One socket write per turn of the event loop for a NATS connection, instead of one per
 * message handled.
 *
 * The client library (`@nats-io/nats-core`) buffers each command and writes the buffer at the
 * next microtask checkpoint. A process that handles messages one after another with an
 * `await` in between (a JetStream consume loop: the handler publishes a hand-out and acks)
 * reaches a checkpoint after every message, so every message cost a `write` system call of
 * its own, and nats-server a read: 8–11 % of a busy tracker's CPU at 5,000 simulated agents
 * (bench/README.md, "One NATS write per turn of the event loop"). Here the buffer is written
 * by a `setImmediate` instead, once the turn's I/O callbacks (every message of the socket
 * reads this turn brought) and the microtasks they started have run: the same bytes, in the
 * same order, at the end of the turn. A loop that goes on in microtasks alone holds its writes
 * until it yields a turn (a consume loop yields one every 5 ms of handling, `EventLoopSlice`)
 * or its buffer passes the library's pending limit.
 *
 * Everything else keeps the library's own path: a buffer past the pending limit is written at
 * once, `flush()` and the heartbeat write theirs at once, and a reconnect writes what waited.
 * `close()` writes what is buffered first, as the library's microtask did before the socket
 * went (`drain()` flushes anyway). The change is made on one connection's protocol handler,
 * not on the library's classes, and only when that handler has the members it relies on;
 * otherwise nothing changes (`coalesceWrites` returns false, and the test that checks it fails
 * on the library upgrade that moved them).
 */
import type { NatsConnection } from '@nats-io/transport-node';

/** The members of the library's protocol handler that `coalesceWrites` uses. */
interface ProtocolHandler {
  readonly outbound: {
    /** Buffers queued. */
    length(): number;
    /** Bytes queued. */
    size(): number;
    fill(data: Uint8Array, ...more: Uint8Array[]): number;
  };
  readonly pendingLimit: number;
  flushPending(): void;
  sendCommand(cmd: string | Uint8Array, ...payloads: Uint8Array[]): void;
  close(err?: Error): Promise<void>;
}

const encoder = new TextEncoder();

/** The connection's protocol handler, when it has every member `sendCommand` relies on. */
function protocolOf(nc: NatsConnection): ProtocolHandler | undefined {
  const protocol: unknown = (nc as unknown as { protocol?: unknown }).protocol;
  if (typeof protocol !== 'object' || protocol === null) {
    return undefined;
  }
  const candidate = protocol as Partial<Record<keyof ProtocolHandler, unknown>>;
  const outbound = candidate.outbound as Partial<Record<string, unknown>> | undefined;
  const shaped =
    typeof candidate.sendCommand === 'function' &&
    typeof candidate.flushPending === 'function' &&
    typeof candidate.close === 'function' &&
    typeof candidate.pendingLimit === 'number' &&
    typeof outbound === 'object' &&
    typeof outbound.length === 'function' &&
    typeof outbound.size === 'function' &&
    typeof outbound.fill === 'function';
  return shaped ? (protocol as ProtocolHandler) : undefined;
}

/**
 * Makes `nc` write its buffered commands once per turn of the event loop (see the module
 * comment). Returns whether it did: false when the library's handler is not as expected.
 */
export function coalesceWrites(nc: NatsConnection): boolean {
  const protocol = protocolOf(nc);
  if (protocol === undefined) {
    return false;
  }
  const flush = (): void => protocol.flushPending();
  protocol.sendCommand = (cmd, ...payloads) => {
    const queued = protocol.outbound.length();
    protocol.outbound.fill(typeof cmd === 'string' ? encoder.encode(cmd) : cmd, ...payloads);
    if (queued === 0) {
      // The first command of this turn: one write for all of them, after the turn's I/O.
      setImmediate(flush);
    } else if (protocol.outbound.size() >= protocol.pendingLimit) {
      protocol.flushPending();
    }
  };
  // The library closes the socket without writing what is buffered: this turn's commands
  // would wait for an immediate that comes after the socket is gone.
  const close = protocol.close.bind(protocol);
  protocol.close = (err) => {
    protocol.flushPending();
    return close(err);
  };
  return true;
}

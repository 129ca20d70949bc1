/**
 * What this machine charges for the work every design of an agent or a seed server must do
 * for each byte it passes on: hash it (the seed server twice, its piece and the whole blob;
 * the agent once when the seed's record vouches for the blob, else twice), write it once into
 * a new file (the page cache), and take it in and send it on over loopback TCP; and what a
 * page fault costs, which a process pays for every page of memory new to it. Measured in the
 * benchmark's own process, in the same run as the pulls, so their CPU can be read against
 * what the machine itself costs that day (bench/README.md, "What the machine charges per
 * byte").
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { closeSync, openSync, rmSync, writeSync } from 'node:fs';
import { createServer, connect, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** The most bytes each measurement moves: enough for a steady figure, bounded in time. */
const MAX_FLOOR_BYTES = 256 * MiB;
/** How long the loopback transfer may take before the measurement gives up, in ms. */
const TRANSFER_TIMEOUT_MS = 60_000;
/** Memory newly allocated and touched a page at a time, to price a page fault. */
const FAULT_PROBE_BYTES = 64 * MiB;
/** A step small enough to touch every page, whatever the page size. */
const TOUCH_STEP_BYTES = 4096;

export interface MachineFloor {
  /** Bytes each per-byte measurement moved. */
  readonly bytes: number;
  /** sha256 of 1 MiB blocks, in CPU seconds per GiB. */
  readonly sha256: number;
  /** 1 MiB writes into a new file (fresh page-cache pages), in CPU seconds per GiB. */
  readonly newFileWrite: number;
  /** The same writes again over the same file's pages, already cached, in CPU s per GiB. */
  readonly rewrite: number;
  /** A loopback TCP transfer, both ends in this process, in CPU seconds per GiB. */
  readonly loopback: number;
  /** CPU microseconds per page fault, memory new to this process touched for the first time. */
  readonly faultMicros: number;
}

/** CPU seconds (user + system) of this process while `work` runs. */
async function cpuSeconds(work: () => void | Promise<void>): Promise<number> {
  const before = process.cpuUsage();
  await work();
  const used = process.cpuUsage(before);
  return (used.user + used.system) / 1e6;
}

/**
 * Measures the floor with up to `bytes` of data (`MAX_FLOOR_BYTES` at most), writing its file
 * in `dir`. The page faults are priced first, before the file written and removed here gives
 * the kernel pages it freed a moment ago.
 */
export async function measureMachineFloor(
  dir: string,
  bytes: number,
  signal: AbortSignal,
): Promise<MachineFloor> {
  signal.throwIfAborted();
  const faultMicros = await priceFaults();

  const block = Buffer.alloc(MiB);
  for (let i = 0; i < block.length; i += 4) {
    block.writeUInt32LE((i * 2_654_435_761) >>> 0, i);
  }
  const blocks = Math.max(1, Math.floor(Math.min(bytes, MAX_FLOOR_BYTES) / MiB));
  const moved = blocks * MiB;
  const perGiB = (cpu: number): number => cpu / (moved / GiB);

  const sha256 = await cpuSeconds(() => {
    const hash = createHash('sha256');
    for (let i = 0; i < blocks; i += 1) {
      hash.update(block);
    }
    hash.digest();
  });

  signal.throwIfAborted();
  const path = join(dir, `shoal-bench-floor-${process.pid}-${Date.now()}`);
  let newFileWrite: number;
  let rewrite: number;
  try {
    const fd = openSync(path, 'w');
    try {
      const writeAll = (): void => {
        for (let i = 0; i < blocks; i += 1) {
          writeSync(fd, block, 0, block.length, i * MiB);
        }
      };
      newFileWrite = await cpuSeconds(writeAll);
      rewrite = await cpuSeconds(writeAll);
    } finally {
      closeSync(fd);
    }
  } finally {
    rmSync(path, { force: true });
  }

  const loopback = await cpuSeconds(() => transfer(block, blocks, signal));
  return {
    bytes: moved,
    sha256: perGiB(sha256),
    newFileWrite: perGiB(newFileWrite),
    rewrite: perGiB(rewrite),
    loopback: perGiB(loopback),
    faultMicros,
  };
}

/** CPU microseconds per minor page fault while fresh memory is touched for the first time. */
async function priceFaults(): Promise<number> {
  const faultsBefore = process.resourceUsage().minorPageFault;
  const cpu = await cpuSeconds(() => {
    const fresh = Buffer.allocUnsafeSlow(FAULT_PROBE_BYTES);
    for (let at = 0; at < fresh.length; at += TOUCH_STEP_BYTES) {
      fresh[at] = 1;
    }
  });
  const faults = process.resourceUsage().minorPageFault - faultsBefore;
  return faults > 0 ? (cpu * 1e6) / faults : Number.NaN;
}

/** A loopback transfer that did not end as it should. */
class TransferError extends Error {
  override readonly name = 'TransferError';
}

/**
 * Sends `blocks` copies of `block` from a server of this process to a client of it over
 * loopback TCP. The client reads into one reused buffer (`onread`), as the agent's piece
 * client does, so the figure is the kernel's and Node's least per byte, not a stream's
 * allocations.
 */
async function transfer(block: Buffer, blocks: number, signal: AbortSignal): Promise<void> {
  const expected = block.length * blocks;
  const sockets = new Set<Socket>();
  const stop = AbortSignal.any([signal, AbortSignal.timeout(TRANSFER_TIMEOUT_MS)]);
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => socket.destroy());
    void (async () => {
      try {
        for (let i = 0; i < blocks; i += 1) {
          if (!socket.write(block)) {
            await once(socket, 'drain', { signal: stop });
          }
        }
        socket.end();
      } catch {
        // Stopped (the abort destroys the socket below) or the socket failed: the client's
        // side reports the transfer as cut short.
        socket.destroy();
      }
    })();
  });
  try {
    server.listen(0, '127.0.0.1');
    await once(server, 'listening', { signal: stop });
    const { port } = server.address() as AddressInfo;
    await new Promise<void>((resolve, reject) => {
      let received = 0;
      const onAbort = (): void =>
        reject(
          new TransferError(
            `the loopback transfer stopped after ${received} of ${expected} bytes`,
            {
              cause: stop.reason,
            },
          ),
        );
      stop.addEventListener('abort', onAbort, { once: true });
      const client = connect({
        port,
        host: '127.0.0.1',
        onread: {
          buffer: Buffer.allocUnsafe(block.length),
          callback: (size) => {
            received += size;
            if (received >= expected) {
              stop.removeEventListener('abort', onAbort);
              resolve();
            }
            return true;
          },
        },
      });
      sockets.add(client);
      client.on('error', reject);
      client.once('close', () => {
        stop.removeEventListener('abort', onAbort);
        reject(
          new TransferError(
            `the loopback connection closed after ${received} of ${expected} bytes`,
          ),
        );
      });
    });
  } finally {
    for (const socket of sockets) {
      socket.destroy();
    }
    server.close();
  }
}

/**
 * The floor's CPU seconds per GiB for one process that hashes each byte `hashes` times,
 * writes it once into a new file, and takes it in and sends it on over loopback.
 */
export function floorPerGiB(floor: MachineFloor, hashes: number): number {
  return hashes * floor.sha256 + floor.newFileWrite + floor.loopback;
}

/** The floor's lines for the report: each item, and the sums for an agent and a seed server. */
export function machineFloorReport(floor: MachineFloor): string[] {
  return [
    `machine floor, measured in this run (${Math.round(floor.bytes / MiB)} MiB each, this bench's process): sha256 ${floor.sha256.toFixed(2)} CPU s/GiB; ` +
      `writing a new file ${floor.newFileWrite.toFixed(2)} (the same pages again ${floor.rewrite.toFixed(2)}); ` +
      `a loopback TCP transfer, both ends, ${floor.loopback.toFixed(2)}; a page fault on new memory ${floor.faultMicros.toFixed(1)} CPU us`,
    `  a lower bound per byte: hashing once, a new file's write and a loopback transfer ${floorPerGiB(floor, 1).toFixed(2)} CPU s/GiB ` +
      `(the agent, when the seed's record vouches for its blobs); hashing twice ${floorPerGiB(floor, 2).toFixed(2)} (the seed server)`,
  ];
}

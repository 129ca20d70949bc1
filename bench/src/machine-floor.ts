/**
 * What this machine charges, in CPU seconds per GiB, for the work every design of an agent or
 * a seed server must do for each byte it passes on: hash it twice (its piece and the whole
 * blob), write it once into a new file (the page cache), and take it in and send it on over
 * loopback TCP. Measured in the benchmark's own process, in the same run as the pulls, so
 * their CPU can be read against what the machine itself costs that day (see bench/README.md,
 * "What the machine charges per byte").
 */
import { createHash } from 'node:crypto';
import { closeSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { createServer, connect, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** How long the loopback transfer may take before the measurement gives up. */
const TRANSFER_TIMEOUT_MS = 60_000;
/** Memory newly mapped and touched a page at a time, to time a page fault. */
const FAULT_PROBE_BYTES = 64 * MiB;
const PAGE_BYTES = 4096;

export interface MachineFloor {
  /** Bytes each measurement moved. */
  readonly bytes: number;
  /** sha256 of 1 MiB blocks. */
  readonly sha256: number;
  /** 1 MiB writes into a new file: the kernel's copy into fresh page-cache pages. */
  readonly newFileWrite: number;
  /** The same writes again over the same file's pages, already in the cache. */
  readonly rewrite: number;
  /** A loopback TCP transfer, both ends (one process sends, the same process receives). */
  readonly loopback: number;
  /** CPU microseconds per page of fresh memory touched for the first time (a page fault). */
  readonly faultMicros: number;
}

/** CPU seconds (user + system) of this process while `work` runs. */
async function cpuSeconds(work: () => void | Promise<void>): Promise<number> {
  const before = process.cpuUsage();
  await work();
  const used = process.cpuUsage(before);
  return (used.user + used.system) / 1e6;
}

/** Measures the floor with `bytes` of data, writing its file in `dir`. */
export async function measureMachineFloor(
  dir: string,
  bytes: number,
  signal: AbortSignal,
): Promise<MachineFloor> {
  const block = Buffer.alloc(MiB);
  for (let i = 0; i < block.length; i += 4) {
    block.writeUInt32LE((i * 2_654_435_761) >>> 0, i);
  }
  const blocks = Math.max(1, Math.floor(bytes / MiB));
  const moved = blocks * MiB;
  const perGiB = (cpu: number): number => cpu / (moved / GiB);

  const sha256 = await cpuSeconds(() => {
    const hash = createHash('sha256');
    for (let i = 0; i < blocks; i += 1) {
      hash.update(block);
    }
    hash.digest();
  });

  const path = join(dir, `shoal-bench-floor-${process.pid}-${Date.now()}`);
  const fd = openSync(path, 'w');
  const writeAll = (): void => {
    for (let i = 0; i < blocks; i += 1) {
      writeSync(fd, block, 0, block.length, i * MiB);
    }
  };
  let newFileWrite: number;
  let rewrite: number;
  try {
    newFileWrite = await cpuSeconds(writeAll);
    rewrite = await cpuSeconds(writeAll);
  } finally {
    closeSync(fd);
    unlinkSync(path);
  }

  const loopback = await cpuSeconds(() => transfer(block, blocks, signal));
  const fresh = Buffer.allocUnsafeSlow(FAULT_PROBE_BYTES);
  const faults = await cpuSeconds(() => {
    for (let at = 0; at < fresh.length; at += PAGE_BYTES) {
      fresh[at] = 1;
    }
  });
  return {
    bytes: moved,
    sha256: perGiB(sha256),
    newFileWrite: perGiB(newFileWrite),
    rewrite: perGiB(rewrite),
    loopback: perGiB(loopback),
    faultMicros: (faults * 1e6) / (FAULT_PROBE_BYTES / PAGE_BYTES),
  };
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
  let done!: () => void;
  let failed!: (error: unknown) => void;
  const finished = new Promise<void>((resolvePromise, rejectPromise) => {
    done = resolvePromise;
    failed = rejectPromise;
  });
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', failed);
    void (async () => {
      for (let i = 0; i < blocks && !socket.destroyed; i += 1) {
        if (!socket.write(block)) {
          await new Promise<void>((resolveDrain) => socket.once('drain', resolveDrain));
        }
      }
      socket.end();
    })();
  });
  const stop = AbortSignal.any([signal, AbortSignal.timeout(TRANSFER_TIMEOUT_MS)]);
  const onAbort = (): void => failed(stop.reason);
  stop.addEventListener('abort', onAbort, { once: true });
  try {
    await new Promise<void>((resolveListen) => server.listen(0, '127.0.0.1', resolveListen));
    const { port } = server.address() as AddressInfo;
    let received = 0;
    const client = connect({
      port,
      host: '127.0.0.1',
      onread: {
        buffer: Buffer.allocUnsafe(block.length),
        callback: (size) => {
          received += size;
          if (received >= expected) {
            done();
          }
          return true;
        },
      },
    });
    sockets.add(client);
    client.on('error', failed);
    await finished;
  } finally {
    stop.removeEventListener('abort', onAbort);
    for (const socket of sockets) {
      socket.destroy();
    }
    await new Promise<void>((resolveClose) => server.close(() => resolveClose()));
  }
}

/** The floor's lines for the report: each item, and their sum for one agent or seed server. */
export function machineFloorReport(floor: MachineFloor): string[] {
  return [
    `machine floor, measured in this run (${Math.round(floor.bytes / MiB)} MiB each, this bench's process): sha256 ${floor.sha256.toFixed(2)} CPU s/GiB; ` +
      `writing a new file ${floor.newFileWrite.toFixed(2)} (the same pages again ${floor.rewrite.toFixed(2)}); ` +
      `a loopback TCP transfer, both ends, ${floor.loopback.toFixed(2)}; a page of fresh memory touched, ${floor.faultMicros.toFixed(1)} CPU us`,
    `  hashing twice, writing a new file once and a loopback transfer: ${floorPerGiB(floor).toFixed(2)} CPU s/GiB, the least an agent or a seed server can spend per byte here`,
  ];
}

/** The floor's sum for one process that hashes twice, writes once and receives and sends once. */
export function floorPerGiB(floor: MachineFloor): number {
  return 2 * floor.sha256 + floor.newFileWrite + floor.loopback;
}

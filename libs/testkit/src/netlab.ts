/**
 * A network of Linux network namespaces, for the shaped-network bench and the test of
 * components on their own addresses: one namespace per host, all joined by a bridge that
 * lives in a namespace of its own, every link shaped with tc's token bucket (tbf) on both
 * ends, so each host has its own upload and download rate.
 *
 * Only addresses of these namespaces are ever used (a /24 of 198.19.0.0/16, in the block set
 * aside for network benchmarks), and the one route to them from the bench's own namespace goes through
 * an unshaped control link that exists only while the lab does. Every namespace is named
 * `shoalbench-<pid>-…`; `create` first removes those whose process is gone (a run killed
 * before it could tear down), and `close` (also run at exit) removes this run's.
 */
import { execFileSync } from 'node:child_process';

import { requireBinary, run } from './process.js';

/** Namespaces and root-side links of every run start with this. */
const PREFIX = 'shoalbench-';
/** Root-side control links are named `sb<pid>` (interface names are at most 15 bytes). */
const ROOT_LINK_PREFIX = 'sb';
/** The bridge's end of the control link (a hyphen: no host is named so). */
const BRIDGE_UPLINK = 'to-bench';
/**
 * The lab's /24: the first three octets, one per process (its pid's low byte), so that two
 * runs at once on one machine (two benches) do not route into each other's namespaces.
 */
const SUBNET = `198.19.${process.pid % 256}`;
/** The bench's own address on the control link. */
const CONTROL_ADDRESS = `${SUBNET}.1`;
/** Longest a packet may wait in a token bucket's queue, in ms (its buffer follows from it). */
const TBF_LATENCY_MS = 100;
/**
 * Bucket size, in bytes: at least one 64 KiB GSO super-packet (veth hands those to tc, and tbf
 * drops what exceeds its bucket), and at least 10 ms at the rate.
 */
const MIN_BURST_BYTES = 64 * 1024;

/** How a link is shaped, each way. */
export interface LinkShape {
  /** Rate in megabits/s (10^6 bit/s), each direction. */
  readonly mbit: number;
  /** One-way delay added at each end, in ms (needs netem; 0: none). */
  readonly delayMs: number;
  /** Packets lost at each end, in percent (needs netem; 0: none). */
  readonly lossPct: number;
}

/** A host of the lab: its namespace and address. */
export interface LabHost {
  readonly name: string;
  /** Network namespace (for `ip netns exec`). */
  readonly netns: string;
  readonly address: string;
  readonly shape: LinkShape;
  /** Bytes this host has sent and received on its link so far. */
  counters(): Promise<{ tx: number; rx: number }>;
  /**
   * Makes the host vanish from the lab (`on`), as one powered off, cut off by a partition or a
   * firewall change does: every packet on its link is dropped both ways (iptables in its own
   * namespace), so its peers get no RST, no FIN, no ICMP; its own loopback still works.
   * `off` brings it back; its connections resume where TCP left them. Idempotent.
   */
  blackhole(on: boolean): Promise<void>;
  /**
   * Shapes the host's link as `shape` says, for a host added with `shapeLater` (one loaded
   * first at the bridge's full speed, as a registry an image is pushed to). Idempotent.
   */
  shapeLink(): Promise<void>;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function ip(args: readonly string[]): Promise<string> {
  return (await run(requireBinary('ip'), args, { timeoutMs: 15_000 })).stdout;
}

/** The rules that drop everything on a host's link (`eth0`) in its namespace. */
const BLACKHOLE_RULES = [
  ['INPUT', '-i', 'eth0', '-j', 'DROP'],
  ['OUTPUT', '-o', 'eth0', '-j', 'DROP'],
] as const;

async function blackhole(netns: string, on: boolean): Promise<void> {
  const iptables = requireBinary('iptables');
  for (const rule of BLACKHOLE_RULES) {
    const args = ['netns', 'exec', netns, iptables, on ? '-I' : '-D', ...rule];
    await run(requireBinary('ip'), args, { timeoutMs: 15_000 });
  }
}

async function tc(args: readonly string[]): Promise<void> {
  await run(requireBinary('tc'), args, { timeoutMs: 15_000 });
}

/** Removes namespaces and control links left by runs whose process is gone. */
async function removeStale(log: (line: string) => void): Promise<void> {
  const stalePid = (name: string, prefix: string): boolean => {
    const pid = Number(/^(\d+)/.exec(name.slice(prefix.length))?.[1] ?? Number.NaN);
    return name.startsWith(prefix) && Number.isInteger(pid) && !isAlive(pid);
  };
  const namespaces = (await ip(['netns', 'list']))
    .split('\n')
    .map((line) => line.split(' ')[0] ?? '')
    .filter((name) => stalePid(name, PREFIX));
  for (const name of namespaces) {
    log(`removing network namespace ${name}, left by an earlier run`);
    await ip(['netns', 'delete', name]).catch(() => undefined);
  }
  const links = (JSON.parse(await ip(['-j', 'link', 'show'])) as { ifname?: string }[])
    .map((link) => (link.ifname ?? '').replace(/@.*$/, ''))
    .filter((name) => /^sb\d+$/.test(name) && stalePid(name, ROOT_LINK_PREFIX));
  for (const name of links) {
    log(`removing link ${name}, left by an earlier run`);
    await ip(['link', 'delete', name]).catch(() => undefined);
  }
}

export class NetLab {
  readonly #id: string;
  readonly #bridgeNs: string;
  readonly #rootLink: string;
  readonly #hosts: LabHost[] = [];
  readonly #namespaces: string[] = [];
  readonly #log: (line: string) => void;
  /** Whether netem exists in this kernel (probed at the first shaped link that asks for it). */
  #netem: boolean | undefined;
  #closed = false;
  readonly #onExit = (): void => this.#closeNow();

  private constructor(log: (line: string) => void) {
    this.#id = `${PREFIX}${process.pid}`;
    this.#bridgeNs = `${this.#id}-br`;
    this.#rootLink = `${ROOT_LINK_PREFIX}${process.pid}`;
    this.#log = log;
  }

  /** Builds the bridge and the control link from this namespace, after removing stale labs. */
  static async create(log: (line: string) => void): Promise<NetLab> {
    requireBinary('tc');
    await removeStale(log);
    const lab = new NetLab(log);
    process.once('exit', lab.#onExit);
    try {
      await lab.#addNamespace(lab.#bridgeNs);
      const br = ['-n', lab.#bridgeNs];
      await ip([...br, 'link', 'add', 'br0', 'type', 'bridge']);
      await ip([...br, 'link', 'set', 'br0', 'up']);
      await ip([...br, 'link', 'set', 'lo', 'up']);
      // The bench's own way in: unshaped, for readiness probes, metrics and pushing the image.
      await ip([
        'link',
        'add',
        lab.#rootLink,
        'type',
        'veth',
        'peer',
        'name',
        BRIDGE_UPLINK,
        'netns',
        lab.#bridgeNs,
      ]);
      await ip([...br, 'link', 'set', BRIDGE_UPLINK, 'master', 'br0', 'up']);
      await ip(['addr', 'add', `${CONTROL_ADDRESS}/24`, 'dev', lab.#rootLink]);
      await ip(['link', 'set', lab.#rootLink, 'up']);
    } catch (error) {
      await lab.close();
      throw error;
    }
    return lab;
  }

  /**
   * Adds a host on the bridge with the `index`-th address, its link shaped both ways: at once,
   * or with `shapeLater` once the host's `shapeLink` is called.
   */
  async addHost(
    name: string,
    index: number,
    shape: LinkShape,
    options: { shapeLater?: boolean } = {},
  ): Promise<LabHost> {
    if (!/^[a-z][a-z0-9]{0,7}$/.test(name) || index < 1 || index > 240) {
      throw new Error(`bad lab host ${name} #${index}`);
    }
    const netns = `${this.#id}-${name}`;
    const address = `${SUBNET}.${10 + index}`;
    await this.#addNamespace(netns);
    const br = ['-n', this.#bridgeNs];
    const inside = ['-n', netns];
    await ip([...br, 'link', 'add', name, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns]);
    await ip([...br, 'link', 'set', name, 'master', 'br0', 'up']);
    await ip([...inside, 'addr', 'add', `${address}/24`, 'dev', 'eth0']);
    await ip([...inside, 'link', 'set', 'eth0', 'up']);
    await ip([...inside, 'link', 'set', 'lo', 'up']);
    let shaped = false;
    const shapeLink = async (): Promise<void> => {
      if (!shaped) {
        shaped = true;
        // Upload: the host's side; download: the bridge's side towards the host.
        await this.#shape(netns, 'eth0', shape);
        await this.#shape(this.#bridgeNs, name, shape);
      }
    };
    if (options.shapeLater !== true) {
      await shapeLink();
    }
    let vanished = false;
    const host: LabHost = {
      name,
      netns,
      address,
      shape,
      counters: async () => {
        const [link] = JSON.parse(
          await ip([...inside, '-s', '-j', 'link', 'show', 'dev', 'eth0']),
        ) as { stats64?: { tx?: { bytes?: number }; rx?: { bytes?: number } } }[];
        return { tx: link?.stats64?.tx?.bytes ?? 0, rx: link?.stats64?.rx?.bytes ?? 0 };
      },
      blackhole: async (on) => {
        // Idempotent: a test's `finally` may bring back a host that never vanished.
        if (on !== vanished) {
          await blackhole(netns, on);
          vanished = on;
        }
      },
      shapeLink,
    };
    this.#hosts.push(host);
    return host;
  }

  /**
   * The bench's own address on the lab's unshaped control link: a server in this namespace
   * listening on it is reachable from every host of the lab.
   */
  get controlAddress(): string {
    return CONTROL_ADDRESS;
  }

  /** True when delay and loss can be applied (netem), false when asked for and missing. */
  get netem(): boolean | undefined {
    return this.#netem;
  }

  /** Removes every namespace of this lab and the control link. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) {
      return;
    }
    this.#closed = true;
    process.off('exit', this.#onExit);
    await ip(['link', 'delete', this.#rootLink]).catch(() => undefined);
    for (const netns of [...this.#namespaces].reverse()) {
      await ip(['netns', 'delete', netns]).catch((error: unknown) =>
        this.#log(`removing ${netns} failed: ${String(error)}`),
      );
    }
  }

  /** The same as `close`, synchronously: for a process exiting before `close` ran. */
  #closeNow(): void {
    if (this.#closed) {
      return;
    }
    this.#closed = true;
    const ipBinary = requireBinary('ip');
    for (const args of [
      ['link', 'delete', this.#rootLink],
      ...this.#namespaces.map((netns) => ['netns', 'delete', netns]),
    ]) {
      try {
        execFileSync(ipBinary, args, { stdio: 'ignore', timeout: 10_000 });
      } catch {
        // Gone already; the next run removes whatever is left.
      }
    }
  }

  async #addNamespace(netns: string): Promise<void> {
    await ip(['netns', 'add', netns]);
    this.#namespaces.push(netns);
  }

  /** Token bucket at `shape.mbit` on `dev`'s egress, behind netem when delay or loss is asked. */
  async #shape(netns: string, dev: string, shape: LinkShape): Promise<void> {
    const rateBytes = (shape.mbit * 1_000_000) / 8;
    const burst = Math.max(MIN_BURST_BYTES, Math.ceil(rateBytes / 100));
    const tbf = ['tbf', 'rate', `${shape.mbit}mbit`, 'burst', String(burst)];
    tbf.push('latency', `${TBF_LATENCY_MS}ms`);
    let parent = ['root'];
    if ((shape.delayMs > 0 || shape.lossPct > 0) && this.#netem !== false) {
      const netem = ['netem', 'delay', `${shape.delayMs}ms`, 'loss', `${shape.lossPct}%`];
      try {
        await tc(['-n', netns, 'qdisc', 'add', 'dev', dev, 'root', 'handle', '1:', ...netem]);
        this.#netem = true;
        parent = ['parent', '1:1', 'handle', '10:'];
      } catch (error) {
        if (!/unknown/i.test(String(error))) {
          throw error;
        }
        this.#netem = false;
        this.#log(
          'this kernel has no netem qdisc: --delay-ms and --loss-pct are skipped; links are shaped for rate only',
        );
      }
    }
    await tc(['-n', netns, 'qdisc', 'add', 'dev', dev, ...parent, ...tbf]);
  }
}

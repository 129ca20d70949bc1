/**
 * The clients the benchmark pulls with, each through one agent: plain HTTP (the default: the
 * mirror's own API, digests checked while streaming), skopeo, or containerd's `ctr`; or, for a
 * direct baseline, each straight from the registry.
 */
import { createHash } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';

import {
  makeTempDir,
  skopeoCopy,
  startContainerd,
  writeDirectHosts,
  writeMirrorHosts,
  type Containerd,
  type Descriptor,
} from '@shoal/testkit';

export const CLIENTS = ['http', 'skopeo', 'ctr'] as const;
export type ClientKind = (typeof CLIENTS)[number];

/** What a client pulls: an image in a registry the agents mirror. */
export interface PullTarget {
  /** `host:port` of the origin registry, as the agents know it (their `ns=`). */
  readonly registryHost: string;
  /** The origin's base URL, e.g. `http://127.0.0.1:5000`. */
  readonly registryUrl: string;
  readonly repository: string;
  readonly tag: string;
  /** The manifest the tag must resolve to. */
  readonly manifest: Descriptor;
  /** Every blob the manifest names (config and layers). */
  readonly blobs: readonly Descriptor[];
}

/** A client bound to one agent, prepared before the clock starts. */
export interface PreparedClient {
  /** Pulls the whole image; throws when a pull fails or content does not verify. */
  pull(signal: AbortSignal): Promise<void>;
  /** A daemon the client pulls through (its containerd), whose CPU counts as the client's. */
  readonly daemonPid?: number | undefined;
  /** Releases what `prepare` set up (a containerd, an output directory). */
  close(): Promise<void>;
}

/**
 * Sets up `kind` to pull `target` through the agent at `agentUrl`, or straight from the
 * registry when `agentUrl` is undefined (the direct baseline).
 */
export async function prepareClient(
  kind: ClientKind,
  agentUrl: string | undefined,
  target: PullTarget,
  timeoutMs: number,
): Promise<PreparedClient> {
  // The registry answers the mirror API's paths itself and ignores `ns=`.
  const url = agentUrl ?? target.registryUrl;
  switch (kind) {
    case 'http':
      return { pull: (signal) => httpPull(url, target, signal), close: async () => {} };
    case 'skopeo':
      return prepareSkopeo(url, target, timeoutMs);
    case 'ctr':
      return prepareCtr(agentUrl, target, timeoutMs);
  }
}

const MANIFEST_ACCEPT = [
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

/** Largest manifest the HTTP client reads (the agent's own default limit). */
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

function isDescriptor(value: unknown): value is Descriptor {
  if (typeof value !== 'object' || value === null) {
    return false;
  }
  const d = value as Record<string, unknown>;
  return (
    typeof d.digest === 'string' && typeof d.size === 'number' && typeof d.mediaType === 'string'
  );
}

/** The blobs an image manifest names, config first. */
function manifestBlobs(body: Buffer): Descriptor[] {
  const parsed: unknown = JSON.parse(body.toString('utf8'));
  if (typeof parsed !== 'object' || parsed === null) {
    throw new Error('manifest is not a JSON object');
  }
  const { config, layers } = parsed as Record<string, unknown>;
  if (!isDescriptor(config) || !Array.isArray(layers) || !layers.every(isDescriptor)) {
    throw new Error('manifest has no config and layers');
  }
  return [config, ...layers];
}

/** Reads a small response body, refusing one past `limit` bytes. */
async function readCapped(response: Response, limit: number): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  if (response.body !== null) {
    for await (const chunk of response.body as AsyncIterable<Uint8Array>) {
      total += chunk.length;
      if (total > limit) {
        throw new Error(`response larger than ${limit} bytes`);
      }
      chunks.push(chunk);
    }
  }
  return Buffer.concat(chunks);
}

/**
 * Pulls as a registry client does, over the mirror's HTTP API: the manifest by tag, then every
 * blob at once. Each blob is hashed as it streams in and dropped; nothing is kept.
 */
async function httpPull(agentUrl: string, target: PullTarget, signal: AbortSignal): Promise<void> {
  const ns = `ns=${encodeURIComponent(target.registryHost)}`;
  const base = `${agentUrl}/v2/${target.repository}`;
  const response = await fetch(`${base}/manifests/${target.tag}?${ns}`, {
    headers: { accept: MANIFEST_ACCEPT },
    signal,
  });
  if (response.status !== 200) {
    throw new Error(`manifest: HTTP ${response.status}`);
  }
  const body = await readCapped(response, MAX_MANIFEST_BYTES);
  if (sha256(body) !== target.manifest.digest) {
    throw new Error(`manifest: got ${sha256(body)}, expected ${target.manifest.digest}`);
  }
  await Promise.all(manifestBlobs(body).map((blob) => pullBlob(agentUrl, target, blob, signal)));
}

/**
 * GETs a blob through an agent's mirror API and hashes it as it streams in, keeping nothing.
 * Throws when the answer is not a 200 or the response is cut; a response that completed is
 * returned with its length and sha256 digest, to be compared by the caller.
 */
export async function fetchBlobDigest(
  agentUrl: string,
  target: Pick<PullTarget, 'repository' | 'registryHost'>,
  blob: Descriptor,
  signal: AbortSignal,
): Promise<{ bytes: number; digest: string }> {
  const [algorithm] = blob.digest.split(':');
  if (algorithm !== 'sha256') {
    throw new Error(`${blob.digest}: only sha256 blobs are checked`);
  }
  const ns = `ns=${encodeURIComponent(target.registryHost)}`;
  const response = await fetch(`${agentUrl}/v2/${target.repository}/blobs/${blob.digest}?${ns}`, {
    signal,
  });
  if (response.status !== 200 || response.body === null) {
    await response.body?.cancel();
    throw new Error(`blob ${blob.digest}: HTTP ${response.status}`);
  }
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of response.body as AsyncIterable<Uint8Array>) {
    hash.update(chunk);
    bytes += chunk.length;
  }
  return { bytes, digest: `sha256:${hash.digest('hex')}` };
}

/** Streams one blob through an agent and checks it; throws on any failure or mismatch. */
export async function pullBlob(
  agentUrl: string,
  target: Pick<PullTarget, 'repository' | 'registryHost'>,
  blob: Descriptor,
  signal: AbortSignal,
): Promise<void> {
  const { bytes, digest } = await fetchBlobDigest(agentUrl, target, blob, signal);
  if (bytes !== blob.size || digest !== blob.digest) {
    throw new Error(`blob ${blob.digest}: got ${bytes} bytes with digest ${digest}`);
  }
}

/**
 * skopeo copies the image into an OCI layout, asking the agent without `ns=` (as docker does):
 * the agents run with the origin as their default registry. skopeo checks every digest itself.
 */
async function prepareSkopeo(
  agentUrl: string,
  target: PullTarget,
  timeoutMs: number,
): Promise<PreparedClient> {
  const dir = await makeTempDir('bench-skopeo');
  const agentHost = new URL(agentUrl).host;
  return {
    pull: async (signal) => {
      signal.throwIfAborted();
      await skopeoCopy(
        `docker://${agentHost}/${target.repository}:${target.tag}`,
        `oci:${dir.path}:${target.tag}`,
        { timeoutMs },
      );
      for (const blob of target.blobs) {
        const [algorithm = '', hex = ''] = blob.digest.split(':');
        const { size } = await stat(join(dir.path, 'blobs', algorithm, hex));
        if (size !== blob.size) {
          throw new Error(`skopeo wrote ${size} bytes for ${blob.digest}, expected ${blob.size}`);
        }
      }
    },
    close: () => dir.remove(),
  };
}

/**
 * Writes `containerd`'s hosts.toml for `target`'s registry: pulls go to the agent at `agentUrl`
 * first, or only to the registry itself (plain HTTP) when `agentUrl` is undefined.
 */
export async function pointContainerd(
  containerd: Containerd,
  target: PullTarget,
  agentUrl: string | undefined,
): Promise<void> {
  if (agentUrl === undefined) {
    await writeDirectHosts(containerd.hostsDir, target.registryHost, target.registryUrl);
  } else {
    await writeMirrorHosts(containerd.hostsDir, target.registryHost, target.registryUrl, agentUrl);
  }
}

/**
 * A fresh containerd sending pulls of the origin to the agent first (hosts.toml), or only to
 * the origin when `agentUrl` is undefined.
 */
async function prepareCtr(
  agentUrl: string | undefined,
  target: PullTarget,
  timeoutMs: number,
): Promise<PreparedClient> {
  const containerd: Containerd = await startContainerd();
  try {
    await pointContainerd(containerd, target, agentUrl);
  } catch (error) {
    await containerd.stop();
    throw error;
  }
  return {
    daemonPid: containerd.process.child.pid,
    pull: async (signal) => {
      signal.throwIfAborted();
      await containerd.pull(`${target.registryHost}/${target.repository}:${target.tag}`, {
        timeoutMs,
      });
      // containerd verifies what it stores; check that it stored all of it.
      const stored = await containerd.contentDigests();
      const missing = [target.manifest, ...target.blobs].filter((b) => !stored.has(b.digest));
      if (missing.length > 0) {
        throw new Error(`containerd is missing ${missing.map((b) => b.digest).join(', ')}`);
      }
    },
    close: () => containerd.stop(),
  };
}

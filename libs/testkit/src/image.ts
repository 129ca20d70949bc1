/**
 * Test images: OCI layouts with N layers of chosen sizes, written as a stream (a 1 GiB layer
 * never sits in memory) and pushed to a registry with skopeo.
 *
 * Each layer is a tar (gzip, stored blocks) holding one file of pseudo-random bytes (AES-CTR key
 * stream from a seed), so layers are incompressible, distinct, reproducible, and unpack in
 * containerd like any image's.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { once } from 'node:events';

import { skopeoCopy, type CopyOptions } from './skopeo.js';

export const MEDIA_TYPES = {
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layer: 'application/vnd.oci.image.layer.v1.tar+gzip',
} as const;

export interface Descriptor {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
}

export interface GeneratedImage {
  /** OCI layout directory. */
  readonly layoutDir: string;
  readonly tag: string;
  readonly manifest: Descriptor;
  readonly config: Descriptor;
  readonly layers: readonly Descriptor[];
  /** Layers and config: every blob a pull fetches besides the manifest. */
  readonly blobs: readonly Descriptor[];
  /** Sum of blob and manifest sizes, in bytes. */
  readonly totalBytes: number;
}

export interface ImageSpec {
  /** Size of each layer's file in bytes (the tar adds headers). */
  readonly layerSizes: readonly number[];
  /** Changes every byte, so different seeds give different images. */
  readonly seed: string;
  readonly tag?: string;
}

const BLOCK = 512;
const CHUNK = 1024 * 1024;

function goArch(): string {
  const map: Record<string, string> = {
    x64: 'amd64',
    arm64: 'arm64',
    arm: 'arm',
    ppc64: 'ppc64le',
    s390x: 's390x',
  };
  return map[process.arch] ?? process.arch;
}

/** A ustar header for one regular file. */
function tarHeader(name: string, size: number): Buffer {
  const header = Buffer.alloc(BLOCK);
  const field = (value: string, offset: number, length: number): void => {
    header.write(value, offset, length, 'ascii');
  };
  const octal = (value: number, length: number): string =>
    value.toString(8).padStart(length - 1, '0');
  field(name, 0, 100);
  field(octal(0o644, 8), 100, 8);
  field(octal(0, 8), 108, 8);
  field(octal(0, 8), 116, 8);
  field(octal(size, 12), 124, 12);
  field(octal(0, 12), 136, 12);
  field('        ', 148, 8);
  field('0', 156, 1);
  field('ustar\u000000', 257, 8);
  let sum = 0;
  for (const byte of header) {
    sum += byte;
  }
  field(`${sum.toString(8).padStart(6, '0')}\u0000 `, 148, 8);
  return header;
}

/**
 * Writes one layer to `dir/blobs/sha256/<digest>` as a stream: a tar, gzipped at level 0
 * (stored blocks: random bytes do not compress, and it keeps generation fast). Registries'
 * clients keep gzip layers as they are, where an uncompressed tar would be recompressed on
 * push. Returns the layer's descriptor and its diff id (digest of the tar).
 */
async function writeLayer(
  dir: string,
  name: string,
  size: number,
  seed: string,
): Promise<{ layer: Descriptor; diffId: string }> {
  const temp = join(dir, `layer-${name}.tmp`);
  const tarHash = createHash('sha256');
  const gzHash = createHash('sha256');
  let gzSize = 0;
  const gzip = createGzip({ level: 0 });
  const written = pipeline(
    gzip,
    new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        gzHash.update(chunk);
        gzSize += chunk.length;
        callback(null, chunk);
      },
    }),
    createWriteStream(temp),
  );
  const write = async (chunk: Buffer): Promise<void> => {
    tarHash.update(chunk);
    if (!gzip.write(chunk)) {
      await once(gzip, 'drain');
    }
  };
  await write(tarHeader(`shoal/${name}.bin`, size));
  const key = createHash('sha256').update(seed).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(CHUNK);
  for (let left = size; left > 0; left -= CHUNK) {
    await write(cipher.update(left >= CHUNK ? zeros : zeros.subarray(0, left)));
  }
  const padding = (BLOCK - (size % BLOCK)) % BLOCK;
  await write(Buffer.alloc(padding + 2 * BLOCK));
  gzip.end();
  await written;
  const digest = `sha256:${gzHash.digest('hex')}`;
  await rename(temp, join(dir, 'blobs', 'sha256', digest.slice(7)));
  return {
    layer: { mediaType: MEDIA_TYPES.layer, digest, size: gzSize },
    diffId: `sha256:${tarHash.digest('hex')}`,
  };
}

async function writeJsonBlob(dir: string, mediaType: string, value: unknown): Promise<Descriptor> {
  const bytes = Buffer.from(JSON.stringify(value));
  const hex = createHash('sha256').update(bytes).digest('hex');
  await writeFile(join(dir, 'blobs', 'sha256', hex), bytes);
  return { mediaType, digest: `sha256:${hex}`, size: bytes.length };
}

/** Generates an OCI layout in `dir` for the host's platform. */
export async function generateImage(dir: string, spec: ImageSpec): Promise<GeneratedImage> {
  const tag = spec.tag ?? 'latest';
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  const layers: Descriptor[] = [];
  const diffIds: string[] = [];
  for (const [index, size] of spec.layerSizes.entries()) {
    const { layer, diffId } = await writeLayer(dir, `layer${index}`, size, `${spec.seed}/${index}`);
    layers.push(layer);
    diffIds.push(diffId);
  }
  const config = await writeJsonBlob(dir, MEDIA_TYPES.config, {
    architecture: goArch(),
    os: 'linux',
    config: { Labels: { 'dev.shoal.test.seed': spec.seed } },
    rootfs: { type: 'layers', diff_ids: diffIds },
    history: layers.map((_, i) => ({ created_by: `shoal test layer ${i}` })),
  });
  const manifest = await writeJsonBlob(dir, MEDIA_TYPES.manifest, {
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.manifest,
    config,
    layers,
  });
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFile(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{ ...manifest, annotations: { 'org.opencontainers.image.ref.name': tag } }],
    }),
  );
  const blobs = [config, ...layers];
  return {
    layoutDir: dir,
    tag,
    manifest,
    config,
    layers,
    blobs,
    totalBytes: blobs.reduce((sum, b) => sum + b.size, manifest.size),
  };
}

/** Pushes a generated image to `registryHost/repository:tag` with skopeo. */
export async function pushImage(
  image: GeneratedImage,
  registryHost: string,
  repository: string,
  options: Pick<CopyOptions, 'destCreds'> & { tag?: string } = {},
): Promise<string> {
  const ref = `${registryHost}/${repository}:${options.tag ?? image.tag}`;
  await skopeoCopy(`oci:${image.layoutDir}:${image.tag}`, `docker://${ref}`, {
    ...(options.destCreds === undefined ? {} : { destCreds: options.destCreds }),
  });
  return ref;
}

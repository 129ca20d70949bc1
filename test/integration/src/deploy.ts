/**
 * Helpers for the deployment tests: where the repository is, the rendered kustomize overlays
 * as plain objects, and the metric names the services define.
 */
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

import { makeTempDir, requireBinary, run } from '@shoal/testkit';
import { parseAllDocuments } from 'yaml';

/** The repository's root directory. */
export const REPO_ROOT = fileURLToPath(new URL('../../../../', import.meta.url));

/** A Kubernetes object as rendered: only the fields every object has are typed. */
export interface K8sObject {
  readonly apiVersion: string;
  readonly kind: string;
  readonly metadata: { readonly name: string; readonly labels?: Record<string, string> };
  readonly [field: string]: unknown;
}

/** `kubectl kustomize` of an overlay (needs kubectl with kustomize v5, i.e. kubectl >= 1.27). */
export async function renderOverlay(overlay: string): Promise<K8sObject[]> {
  return renderKustomization(join(REPO_ROOT, 'deploy', 'k8s', 'overlays', overlay));
}

/**
 * An overlay with components added, as an operator adds them: a kustomization of its own (in
 * a temporary directory) naming the overlay and the components (`deploy/k8s/components/*`).
 */
export async function renderWithComponents(
  overlay: string,
  components: readonly string[],
): Promise<K8sObject[]> {
  const dir = await makeTempDir('kustomization');
  try {
    const k8s = join(REPO_ROOT, 'deploy', 'k8s');
    // kustomize takes only relative paths to other kustomizations.
    await writeFile(
      join(dir.path, 'kustomization.yaml'),
      [
        'apiVersion: kustomize.config.k8s.io/v1beta1',
        'kind: Kustomization',
        'resources:',
        `  - ${relative(dir.path, join(k8s, 'overlays', overlay))}`,
        'components:',
        ...components.map((c) => `  - ${relative(dir.path, join(k8s, 'components', c))}`),
        '',
      ].join('\n'),
    );
    return await renderKustomization(dir.path);
  } finally {
    await dir.remove();
  }
}

async function renderKustomization(path: string): Promise<K8sObject[]> {
  const kubectl = requireBinary('kubectl');
  const { stdout } = await run(kubectl, ['kustomize', path]);
  return parseAllDocuments(stdout).map((doc) => {
    if (doc.errors.length > 0) {
      throw new Error(`${path} rendered invalid YAML: ${doc.errors.join('; ')}`);
    }
    return doc.toJS() as K8sObject;
  });
}

/** The one object of a kind and name; fails when it is missing. */
export function find(objects: readonly K8sObject[], kind: string, name: string): K8sObject {
  const found = objects.find((o) => o.kind === kind && o.metadata.name === name);
  if (found === undefined) {
    throw new Error(`no ${kind} ${name} among ${names(objects).join(', ')}`);
  }
  return found;
}

/** `Kind/name` of every object, for messages and membership checks. */
export function names(objects: readonly K8sObject[]): string[] {
  return objects.map((o) => `${o.kind}/${o.metadata.name}`);
}

/** Reads a nested field by path, with no claim about its type. */
export function at(value: unknown, ...path: (string | number)[]): unknown {
  let current = value;
  for (const key of path) {
    if (current === null || typeof current !== 'object') {
      return undefined;
    }
    current = (current as Record<string | number, unknown>)[key];
  }
  return current;
}

/** A container as the tests read it. */
export interface Container {
  readonly name: string;
  readonly image: string;
  readonly args?: string[];
  readonly env?: {
    name: string;
    value?: string;
    valueFrom?: {
      secretKeyRef?: { name: string; key: string; optional?: boolean };
      configMapKeyRef?: { name: string; key: string };
      fieldRef?: { fieldPath: string };
    };
  }[];
  readonly envFrom?: { configMapRef?: { name: string }; secretRef?: { name: string } }[];
  readonly ports?: { name?: string; containerPort: number; hostPort?: number }[];
  readonly volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
  readonly resources?: {
    requests?: Record<string, string>;
    limits?: Record<string, string>;
  };
}

/** A pod spec as the tests read it. */
export interface PodSpec {
  readonly hostNetwork?: boolean;
  readonly containers: Container[];
  readonly initContainers?: Container[];
  readonly volumes?: {
    name: string;
    hostPath?: { path: string };
    secret?: { secretName: string };
    configMap?: { name: string };
    persistentVolumeClaim?: { claimName: string };
  }[];
  readonly nodeSelector?: Record<string, string>;
}

/** The pod spec of a workload (Deployment, StatefulSet, DaemonSet, Job). */
export function podSpec(workload: K8sObject): PodSpec {
  const spec = at(workload, 'spec', 'template', 'spec');
  if (spec === undefined) {
    throw new Error(`${workload.kind}/${workload.metadata.name} has no pod template`);
  }
  return spec as PodSpec;
}

/** Every workload with a pod template. */
export function workloads(objects: readonly K8sObject[]): K8sObject[] {
  return objects.filter((o) => ['Deployment', 'StatefulSet', 'DaemonSet', 'Job'].includes(o.kind));
}

/** A container's environment variable's literal value. */
export function envValue(container: Container, name: string): string | undefined {
  return container.env?.find((e) => e.name === name)?.value;
}

/**
 * Metric names the services define, as `shoal_<service>_<thing>`: every
 * `name: \`${prefix}<thing>\`` in services/<service>/src.
 */
export async function definedMetrics(): Promise<Set<string>> {
  const metrics = new Set<string>();
  const servicesDir = join(REPO_ROOT, 'services');
  for (const service of await readdir(servicesDir)) {
    const src = join(servicesDir, service, 'src');
    let files: string[];
    try {
      files = (await readdir(src, { recursive: true })).filter((f) => f.endsWith('.ts'));
    } catch {
      continue;
    }
    for (const file of files) {
      const text = await readFile(join(src, file), 'utf8');
      for (const match of text.matchAll(/name:\s*`\$\{prefix\}([a-z0-9_]+)`/g)) {
        metrics.add(`shoal_${service}_${match[1] ?? ''}`);
      }
    }
  }
  return metrics;
}

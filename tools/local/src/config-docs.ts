#!/usr/bin/env node
/**
 * Writes docs/configuration.md, the configuration reference, from the services' zod schemas
 * (the `*Fields` object each `services/<name>/src/config.ts` exports): every variable with its
 * type, default and description. A field's description is its `.describe()` text, else the doc
 * comment above it in the source; a field with neither stops the generator, so nothing ships
 * undocumented.
 *
 *   node tools/local/dist/src/config-docs.js           writes docs/configuration.md
 *   node tools/local/dist/src/config-docs.js --check   exit 1 when the file differs (for tests)
 *   --file PATH                                          another file than docs/configuration.md
 *
 * Run it after `npm run build` (it reads the built schemas): `npm run config-docs`.
 */
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

import { format, resolveConfig } from 'prettier';
import ts from 'typescript';
import { z } from 'zod';

const ROOT = fileURLToPath(new URL('../../../../', import.meta.url));
const OUTPUT = join(ROOT, 'docs', 'configuration.md');

/** The services, in the order the reference lists them, and the schema each exports. */
const SERVICES = [
  { name: 'agent', fields: 'agentFields', what: 'the node agent (DaemonSet)' },
  { name: 'tracker', fields: 'trackerFields', what: 'the stateless tracker' },
  { name: 'seedserver', fields: 'seedFields', what: 'the seed server and its object gateway' },
  { name: 'watcher', fields: 'watcherFields', what: 'webhooks, schedule and preheat jobs' },
] as const;

/** Where doc comments are looked for: the services' and the shared libraries' sources. */
const SOURCE_DIRS = ['services', 'libs'];

interface Field {
  readonly name: string;
  readonly type: string;
  readonly defaultText: string;
  readonly description: string;
}

/** The schema and every schema it wraps (default, optional, pipe, ...), outermost first. */
function* layers(schema: z.core.$ZodType): Generator<z.core.$ZodType> {
  yield schema;
  const def = schema._zod.def as unknown as Record<string, unknown> & { type: string };
  for (const key of ['innerType', 'in', 'schema']) {
    const inner = def[key];
    if (inner instanceof z.ZodType) {
      yield* layers(inner);
      return;
    }
  }
}

function meta(schema: z.core.$ZodType): Record<string, unknown> | undefined {
  return z.globalRegistry.get(schema);
}

/** `integer (ms)`, `` `on` \| `off` ``, `host:port`, `string`, ... */
function typeOf(name: string, schema: z.core.$ZodType): string {
  for (const layer of layers(schema)) {
    const envType = meta(layer)?.envType;
    if (typeof envType === 'string') {
      const unit = /_(MS|BYTES)$/.exec(name)?.[1];
      return envType === 'integer' && unit !== undefined
        ? `integer (${unit === 'MS' ? 'ms' : 'bytes'})`
        : envType;
    }
    const def = layer._zod.def as unknown as { type: string; entries?: Record<string, string> };
    if (def.type === 'enum' && def.entries !== undefined) {
      return Object.values(def.entries)
        .map((v) => `\`${v}\``)
        .join(' \\| ');
    }
    if (def.type === 'string' || def.type === 'number' || def.type === 'boolean') {
      return def.type;
    }
  }
  return 'string';
}

/** The default as written in the environment, `unset` for an optional variable, or required. */
function defaultOf(schema: z.core.$ZodType): string {
  for (const layer of layers(schema)) {
    const def = layer._zod.def as unknown as { type: string; defaultValue?: unknown };
    if (def.type === 'default') {
      const value = def.defaultValue;
      if (value === '') {
        return '(empty)';
      }
      // Defaults computed from the machine (peer ids) are shown as the rule, not this host.
      return typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean'
        ? `\`${String(value).replaceAll(hostname(), '<hostname>')}\``
        : 'computed at start';
    }
    if (def.type === 'optional') {
      return 'unset';
    }
  }
  return '**required**';
}

/** Doc comments of `NAME: ...` properties in the sources, by variable name and file. */
async function docComments(): Promise<Map<string, { text: string; file: string }[]>> {
  const found = new Map<string, { text: string; file: string }[]>();
  for (const top of SOURCE_DIRS) {
    for (const pkg of await readdir(join(ROOT, top))) {
      const src = join(ROOT, top, pkg, 'src');
      let files: string[];
      try {
        files = (await readdir(src, { recursive: true })).filter((f) => f.endsWith('.ts'));
      } catch {
        continue;
      }
      for (const file of files) {
        const path = join(src, file);
        const text = await readFile(path, 'utf8');
        if (!/\b(SHOAL|OTEL)_[A-Z0-9_]+:/.test(text)) {
          continue;
        }
        const source = ts.createSourceFile(path, text, ts.ScriptTarget.Latest, true);
        const visit = (node: ts.Node): void => {
          if (
            ts.isPropertyAssignment(node) &&
            ts.isIdentifier(node.name) &&
            /^(SHOAL|OTEL)_[A-Z0-9_]+$/.test(node.name.text)
          ) {
            const comment = ts
              .getJSDocCommentsAndTags(node)
              .filter(ts.isJSDoc)
              .map((doc) => ts.getTextOfJSDocComment(doc.comment) ?? '')
              .join(' ')
              .replace(/\s+/g, ' ')
              .trim();
            if (comment !== '') {
              const list = found.get(node.name.text) ?? [];
              list.push({ text: comment, file: relative(ROOT, path) });
              found.set(node.name.text, list);
            }
          }
          ts.forEachChild(node, visit);
        };
        visit(source);
      }
    }
  }
  return found;
}

async function fieldsOf(service: (typeof SERVICES)[number]): Promise<Record<string, z.ZodType>> {
  const path = join(ROOT, 'services', service.name, 'dist', 'src', 'config.js');
  const module = (await import(pathToFileURL(path).href)) as Record<string, unknown>;
  const schema = module[service.fields];
  if (!(schema instanceof z.ZodObject)) {
    throw new Error(`${relative(ROOT, path)} exports no zod object ${service.fields}`);
  }
  return schema.shape;
}

/** The whole reference, formatted as the repository's prettier formats Markdown. */
export async function configReference(): Promise<string> {
  const docs = await docComments();
  const missing: string[] = [];
  const sections: string[] = [];
  for (const service of SERVICES) {
    const fields: Field[] = [];
    for (const [name, schema] of Object.entries(await fieldsOf(service))) {
      const candidates = docs.get(name) ?? [];
      // The service's own comment first: a shared variable may say more where it is used.
      const own = candidates.find((c) => c.file.startsWith(`services/${service.name}/`));
      const description = schema.description ?? (own ?? candidates[0])?.text;
      if (description === undefined) {
        missing.push(`${service.name}: ${name}`);
        continue;
      }
      fields.push({
        name,
        type: typeOf(name, schema),
        defaultText: defaultOf(schema),
        description,
      });
    }
    sections.push(
      [
        `## ${service.name}`,
        '',
        `\`services/${service.name}\`: ${service.what}. Read by \`services/${service.name}/src/config.ts\` (\`${service.fields}\`).`,
        '',
        '| variable | type | default | description |',
        '| --- | --- | --- | --- |',
        ...fields.map(
          (f) =>
            `| \`${f.name}\` | ${f.type} | ${f.defaultText} | ${f.description.replaceAll('|', '\\|')} |`,
        ),
        '',
      ].join('\n'),
    );
  }
  if (missing.length > 0) {
    throw new Error(
      `undocumented variables (add .describe() or a doc comment): ${missing.join(', ')}`,
    );
  }
  const text = [
    '# Configuration reference',
    '',
    'Generated from the zod schemas by `npm run config-docs` (after `npm run build`); do not edit it',
    'by hand. `test/integration/test/config-docs.test.ts` fails when this file and the schemas',
    'differ. Every service reads only environment variables; each reports every problem at once',
    'and exits 1 without starting, and refuses a secret that still holds the deploy files',
    "`change-me` placeholder. `OTEL_*` variables (tracing) are read by OpenTelemetry's own",
    'configuration and are described in the README.',
    '',
    'Types: `integer (ms)` and `integer (bytes)` are whole numbers in those units; `host:port`',
    'is an address to listen on (`[::1]:p` for IPv6); a default of `unset` means the feature is',
    'off (or computed) unless the variable is set.',
    '',
    ...sections,
  ].join('\n');
  const options = (await resolveConfig(OUTPUT)) ?? {};
  return format(text, { ...options, parser: 'markdown' });
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: { check: { type: 'boolean', default: false }, file: { type: 'string' } },
  });
  const file = values.file ?? OUTPUT;
  const generated = await configReference();
  if (values.check) {
    const current = await readFile(file, 'utf8').catch(() => '');
    if (current !== generated) {
      process.stderr.write(
        `${file} is out of date with the zod schemas: run \`npm run build && npm run config-docs\` and commit docs/configuration.md\n`,
      );
      return 1;
    }
    process.stdout.write(`${file} is up to date\n`);
    return 0;
  }
  await writeFile(file, generated);
  process.stdout.write(`wrote ${file}\n`);
  return 0;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  try {
    process.exitCode = await main();
  } catch (error) {
    process.stderr.write(
      `config-docs: ${error instanceof Error ? error.message : String(error)}\n`,
    );
    process.exitCode = 1;
  }
}

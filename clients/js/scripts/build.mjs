// Builds the SDK into dist/ (or `--outdir DIR`): the ES module `switchboard.js`, the classic
// script `switchboard.iife.js` (global `Switchboard`), both minified, and the type declarations
// (`switchboard.d.ts` and `types/`). Prints each bundle's size, raw and gzipped, and fails when
// the ES module is 9 KB (9216 bytes) or more gzipped.
//
//   node scripts/build.mjs [--outdir DIR]

import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

import { build } from 'esbuild';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const GZIP_LIMIT = 9 * 1024;

const args = process.argv.slice(2);
const i = args.indexOf('--outdir');
const out = path.resolve(i >= 0 ? args[i + 1] : path.join(ROOT, 'dist'));
const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8'));

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

const common = {
  entryPoints: [path.join(ROOT, 'src/index.ts')],
  bundle: true,
  minify: true,
  target: 'es2020',
  // Private members (`_name`) never leave the bundle: shorten them.
  mangleProps: /^_/,
  define: { SDK_VERSION: JSON.stringify(pkg.version) },
  banner: { js: `/*! ${pkg.name} ${pkg.version} | ${pkg.license} */` },
  legalComments: 'none',
  logLevel: 'warning',
};
await build({ ...common, format: 'esm', outfile: path.join(out, 'switchboard.js') });
await build({ ...common, format: 'iife', globalName: 'Switchboard', outfile: path.join(out, 'switchboard.iife.js') });

// Declarations: one file per module under types/, and the entry point that re-exports them.
execFileSync(
  process.execPath,
  [path.join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', ROOT, '--declarationDir', path.join(out, 'types')],
  { stdio: 'inherit' },
);
writeFileSync(path.join(out, 'switchboard.d.ts'), "export * from './types/index.js';\n");

let ok = true;
for (const file of ['switchboard.js', 'switchboard.iife.js']) {
  const bytes = readFileSync(path.join(out, file));
  const gz = gzipSync(bytes, { level: 9 }).length;
  console.log(`${file}: ${bytes.length} bytes minified, ${gz} bytes gzipped (limit ${GZIP_LIMIT})`);
  if (gz >= GZIP_LIMIT) ok = false;
}
if (!ok) {
  console.error(`build: a bundle is ${GZIP_LIMIT} bytes or more gzipped`);
  process.exit(1);
}

import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vite'

// The dashboard (issue 14): built into dist/ui, served by the platform at /ui/. Everything is bundled —
// no URL outside the platform is referenced at run time.
const here = fileURLToPath(new URL('.', import.meta.url))

export default defineConfig({
  root: here,
  base: '/ui/',
  logLevel: 'warn',
  oxc: { jsx: { runtime: 'automatic', importSource: 'preact' } },
  build: {
    outDir: fileURLToPath(new URL('../dist/ui', import.meta.url)),
    emptyOutDir: true,
    target: 'es2022',
    chunkSizeWarningLimit: 200,
    assetsInlineLimit: 0,
  },
})

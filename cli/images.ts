import type { Command } from 'commander'
import type { Runner } from './args.js'

export function registerImagesCommands(program: Command, run: Runner): void {
  const images = program.command('images').description('runtime images of the docker backend')
  images.command('build')
    .description('build kindling/runtime-node from this host\'s node binary (no registry needed)')
    .option('--force', 'rebuild even when the image exists')
    .action((opts: { force?: boolean }) => run(async (ctx) => {
      const { buildImages } = await import('../embedded/main.js')
      const result = await buildImages({ env: ctx.env, force: opts.force === true, progress: (line) => ctx.stderr.write(`${line}\n`) })
      ctx.stdout.write(result.built
        ? `built ${result.tag} (${(result.size / 1024 / 1024).toFixed(0)} MiB) in ${Math.round(result.ms)} ms\n`
        : `${result.tag} is up to date\n`)
      return 0
    }))
}

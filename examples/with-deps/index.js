// A function with a dependency: `kindling fn deploy uptime --runtime node --code examples/with-deps`
// has the platform install `ms` (npm, in a sandboxed build instance) before the first load.
import ms from 'ms'

const started = Date.now()

export default (event) => `up for ${ms(Date.now() - started, { long: true })}; ${event.query.d ?? '90s'} is ${ms(event.query.d ?? '90s')} ms`

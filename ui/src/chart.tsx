import { useEffect, useRef } from 'preact/hooks'
import uPlot from 'uplot'
import 'uplot/dist/uPlot.min.css'

export interface ChartProps {
  title: string
  /** The series (index 0 is x); fixed for the chart's life. */
  series: uPlot.Series[]
  data: uPlot.AlignedData
  /** Extra y-axis settings (units). */
  yLabel?: string
  testId: string
}

const HEIGHT = 160

/** A uPlot chart that follows its container's width and takes new data without being rebuilt. */
export function Chart({ title, series, data, yLabel, testId }: ChartProps) {
  const box = useRef<HTMLDivElement>(null)
  const plot = useRef<uPlot | null>(null)

  useEffect(() => {
    const el = box.current
    if (el === null) return
    const axisStroke = getComputedStyle(el).getPropertyValue('--muted').trim() || '#888'
    const grid = { stroke: getComputedStyle(el).getPropertyValue('--grid').trim() || '#8883', width: 1 }
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height: HEIGHT,
      series,
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [
        { stroke: axisStroke, grid, ticks: grid },
        { stroke: axisStroke, grid, ticks: grid, size: 50, ...(yLabel === undefined ? {} : { label: yLabel, labelSize: 14 }) },
      ],
    }
    const u = new uPlot(opts, data, el)
    plot.current = u
    const ro = new ResizeObserver(() => u.setSize({ width: Math.max(200, el.clientWidth), height: HEIGHT }))
    ro.observe(el)
    return () => {
      ro.disconnect()
      u.destroy()
      plot.current = null
    }
  }, [])

  useEffect(() => {
    plot.current?.setData(data)
  }, [data])

  return (
    <figure class="chart">
      <figcaption>{title}</figcaption>
      <div ref={box} data-testid={testId} data-points={pointsOf(data)} />
    </figure>
  )
}

/** Bars for the stacked start-kind chart. */
export const bars = uPlot.paths.bars?.({ size: [0.8, 40] })

/** Points above zero over the y series handed to uPlot: what the browser test watches change. */
function pointsOf(data: uPlot.AlignedData): number {
  let n = 0
  for (let s = 1; s < data.length; s++) for (const v of data[s] ?? []) if (v !== null && v !== undefined && v > 0) n++
  return n
}

"""The gateway's dashboard (`/ui`): `llmroute.gateway.ui.dashboard.Dashboard` serves the pages,
`llmroute.gateway.ui.data` reads the trace store, `llmroute.gateway.ui.charts` draws SVG charts."""

// Package web holds the browser-side code of CAPS, embedded in the caps
// binary so that the hub serves it with no build step and no network.
package web

import (
	"embed"
	"io/fs"
)

//go:embed dashboard/*.html dashboard/*.js dashboard/*.css dashboard/*.svg
var dashboardFiles embed.FS

// Dashboard returns the dashboard page's files: index.html and the modules,
// styles and icon it loads (see internal/dashboard, which serves them).
func Dashboard() fs.FS {
	sub, err := fs.Sub(dashboardFiles, "dashboard")
	if err != nil {
		panic(err) // the directory is embedded above: cannot happen
	}
	return sub
}

package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteJSON prints one JSON object per scenario: the CAPS row (carrying the
// NATS rate and the ratio) when there is one, else the first row.
func WriteJSON(w io.Writer, rows []Result) error {
	enc := json.NewEncoder(w)
	seen := map[string]bool{}
	for i, r := range rows {
		if seen[r.Scenario] {
			continue
		}
		best := r
		for _, x := range rows[i:] {
			if x.Scenario == r.Scenario && strings.HasPrefix(x.Target, "caps") {
				best = x
				break
			}
		}
		seen[r.Scenario] = true
		if err := enc.Encode(best); err != nil {
			return err
		}
	}
	return nil
}

// WriteTable prints the rows for people, with the CAPS/NATS ratio.
func WriteTable(w io.Writer, rows []Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\ttarget\trate\tunit\tMB/s\tp50 µs\tp90 µs\tp99 µs\tp99.9 µs\tmax µs\tratio\t")
	for _, r := range rows {
		if r.Err != "" {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\t\t\t\t\t\t\t\n", r.Scenario, r.Target, num(r.Rate), "ERROR: "+r.Err)
			continue
		}
		ratio := ""
		if r.Ratio > 0 {
			ratio = fmt.Sprintf("%.2f×", r.Ratio)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
			r.Scenario, r.Target, num(r.Rate), r.Unit, opt(r.MBps, 1),
			opt(r.P50us, 0), opt(r.P90us, 0), opt(r.P99us, 0), opt(r.P999us, 0), opt(r.MaxUs, 0), ratio)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rows {
		if len(r.Rates) > 1 {
			parts := make([]string, len(r.Rates))
			for i, x := range r.Rates {
				parts[i] = num(x)
			}
			fmt.Fprintf(w, "  %s on %s: runs %s (median shown)\n", r.Scenario, r.Target, strings.Join(parts, ", "))
		}
		if r.P99Ratio > 0 {
			fmt.Fprintf(w, "  %s: p99 CAPS/NATS %.2f× (%.0f µs vs %.0f µs)\n", r.Scenario, r.P99Ratio, r.P99us, r.NATSP99us)
		}
		if r.CPURatio > 0 {
			fmt.Fprintf(w, "  %s: CPU per %s (whole process) CAPS %.2f µs, NATS %.2f µs: NATS/CAPS %.2f×\n",
				r.Scenario, perUnit(r.Unit), r.CPUPerOpUs, r.NATSCPUPerOpUs, r.CPURatio)
		}
		if r.Lost > 0 {
			fmt.Fprintf(w, "  %s on %s: %d lost\n", r.Scenario, r.Target, r.Lost)
		}
		if r.Conns > 0 && r.HeapPerConnB == 0 && r.RSSPerConnB == 0 {
			fmt.Fprintf(w, "  conns on %s: %d connections in %.2fs; hub memory unknown (%s)\n", r.Target, r.Count, r.ConnectSeconds, r.MemoryNote)
		} else if r.Conns > 0 {
			fmt.Fprintf(w, "  conns on %s: %d connections in %.2fs; hub memory per connection: %s heap+stack (%s of it stacks), %s resident; %.1f goroutines each",
				r.Target, r.Count, r.ConnectSeconds, bytesStr(r.HeapPerConnB), bytesStr(r.StackPerConnB), bytesStr(r.RSSPerConnB), r.HubGoroutinesPC)
			if r.MemoryNote != "" {
				fmt.Fprintf(w, " (%s)", r.MemoryNote)
			}
			fmt.Fprintln(w)
		}
	}
	return nil
}

// perUnit names one of what unit counts per second ("msgs/s": "message").
func perUnit(unit string) string {
	switch unit {
	case "msgs/s":
		return "message"
	case "deliveries/s":
		return "delivery"
	case "lifecycles/s":
		return "lifecycle"
	}
	return strings.TrimSuffix(unit, "/s")
}

func opt(v float64, prec int) string {
	if v == 0 {
		return ""
	}
	if prec == 0 {
		return num(v)
	}
	return fmt.Sprintf("%.*f", prec, v)
}

// num renders v with thousands separators.
func num(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func bytesStr(v float64) string {
	if v >= 1024 {
		return fmt.Sprintf("%.1f KiB", v/1024)
	}
	return fmt.Sprintf("%.0f B", v)
}

package simulations

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Plot geometry and legend limits used by WriteSVG.
const (
	svgWidth      = 8 * vg.Inch
	svgHeight     = 4.5 * vg.Inch
	legendMaxRows = 12
)

// WriteCSV writes s to dir/<s.Name>.csv. The header is the sanitised XLabel
// followed by the column names; each row is X[i] then Y[c][i] for every
// column. Numbers are formatted with strconv 'g' and the shortest
// round-trip precision, NaN as an empty field, so identical input gives
// byte-identical files. The file (mode 0644) is replaced atomically.
func WriteCSV(dir string, s Series) error {
	if err := s.Validate(); err != nil {
		return err
	}
	return writeFileAtomic(dir, s.Name+".csv", func(w io.Writer) error {
		cw := csv.NewWriter(w)
		row := make([]string, 1+len(s.Columns))
		row[0] = csvToken(s.XLabel)
		copy(row[1:], s.Columns)
		if err := cw.Write(row); err != nil {
			return err
		}
		for i, x := range s.X {
			row[0] = formatFloat(x)
			for c := range s.Columns {
				row[1+c] = formatFloat(s.Y[c][i])
			}
			if err := cw.Write(row); err != nil {
				return err
			}
		}
		cw.Flush()
		return cw.Error()
	})
}

// WriteSVG writes s to dir/<s.Name>.svg as an 8in x 4.5in line chart: one
// line per column (distinct colours and dash patterns), title, axis labels
// and a legend at the top right listing at most 12 columns followed by
// "… N more". NaN and ±Inf values leave gaps in their line; an isolated
// finite point is drawn as a dot. Identical input gives a byte-identical
// file, which is replaced atomically (mode 0644).
func WriteSVG(dir string, s Series) error {
	if err := s.Validate(); err != nil {
		return err
	}
	p, err := buildPlot(s)
	if err != nil {
		return fmt.Errorf("series %q: %w", s.Name, err)
	}
	wt, err := p.WriterTo(svgWidth, svgHeight, "svg")
	if err != nil {
		return fmt.Errorf("series %q: %w", s.Name, err)
	}
	return writeFileAtomic(dir, s.Name+".svg", func(w io.Writer) error {
		_, err := wt.WriteTo(w)
		return err
	})
}

// WriteAll creates dir (mode 0755) if needed and writes a CSV and an SVG file
// for every series. It stops at the first error.
func WriteAll(dir string, series []Series) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, s := range series {
		if err := WriteCSV(dir, s); err != nil {
			return err
		}
		if err := WriteSVG(dir, s); err != nil {
			return err
		}
	}
	return nil
}

func buildPlot(s Series) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = s.Title
	p.X.Label.Text = s.XLabel
	p.Y.Label.Text = s.YLabel
	p.Legend.Top = true
	p.Legend.Left = false
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	p.Add(plotter.NewGrid())

	var (
		legendNames []string
		legendLines []plot.Thumbnailer // nil for the "… N more" row
	)

	for c, name := range s.Columns {
		style := draw.LineStyle{
			Color:  plotutil.Color(c),
			Width:  vg.Points(1),
			Dashes: plotutil.Dashes(c),
		}
		segments, isolated := splitFinite(s.X, s.Y[c])
		// legend is the thumbnail for the column; it is never added to the
		// plot itself, so an all-NaN column still gets a legend entry.
		legend := &plotter.Line{LineStyle: style}
		for _, seg := range segments {
			l, err := plotter.NewLine(seg)
			if err != nil {
				return nil, err
			}
			l.LineStyle = style
			p.Add(l)
		}
		if len(isolated) > 0 {
			sc, err := plotter.NewScatter(isolated)
			if err != nil {
				return nil, err
			}
			sc.GlyphStyle = draw.GlyphStyle{
				Color:  style.Color,
				Radius: vg.Points(1.5),
				Shape:  draw.CircleGlyph{},
			}
			p.Add(sc)
		}
		if c < legendMaxRows {
			legendNames = append(legendNames, name)
			legendLines = append(legendLines, legend)
		}
	}
	if n := len(s.Columns) - legendMaxRows; n > 0 {
		legendNames = append(legendNames, fmt.Sprintf("… %d more", n))
		legendLines = append(legendLines, nil)
	}

	// Give the legend an opaque background so lines under it don't hide it.
	bg := &legendBackground{}
	for _, name := range legendNames {
		bg.textWidth = max(bg.textWidth, p.Legend.TextStyle.Rectangle(" "+name).Max.X)
	}
	for i, name := range legendNames {
		if legendLines[i] == nil {
			p.Legend.Add(name, bg)
		} else {
			p.Legend.Add(name, bg, legendLines[i])
		}
	}
	return p, nil
}

// legendBackground is a legend thumbnail that paints the whole legend row
// (icon plus the text to its left, the legend being on the right) white.
type legendBackground struct {
	textWidth vg.Length // widest legend text, including a leading space
}

// Thumbnail implements plot.Thumbnailer.
func (b *legendBackground) Thumbnail(c *draw.Canvas) {
	const margin = 2
	minX := c.Min.X - b.textWidth - margin
	maxX := c.Max.X + margin
	c.FillPolygon(color.White, []vg.Point{
		{X: minX, Y: c.Min.Y}, {X: maxX, Y: c.Min.Y},
		{X: maxX, Y: c.Max.Y}, {X: minX, Y: c.Max.Y},
	})
}

// splitFinite splits the points (x[i], y[i]) into runs of consecutive
// finite y values. Runs of two or more points are returned as segments,
// single points as isolated.
func splitFinite(x, y []float64) (segments []plotter.XYs, isolated plotter.XYs) {
	var cur plotter.XYs
	flush := func() {
		switch len(cur) {
		case 0:
		case 1:
			isolated = append(isolated, cur[0])
		default:
			segments = append(segments, cur)
		}
		cur = nil
	}
	for i, v := range y {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			flush()
			continue
		}
		cur = append(cur, plotter.XY{X: x[i], Y: v})
	}
	flush()
	return segments, isolated
}

// formatFloat formats v for CSV: shortest round-trip 'g' form, NaN as "".
func formatFloat(v float64) string {
	if math.IsNaN(v) {
		return ""
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// csvToken turns a label into a lower-case [a-z0-9_] token ("x" if nothing
// is left), so the CSV's first header needs no quoting.
func csvToken(label string) string {
	var b strings.Builder
	pendingSep := false
	for _, r := range strings.ToLower(label) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			if pendingSep && b.Len() > 0 {
				b.WriteByte('_')
			}
			pendingSep = false
			b.WriteRune(r)
			continue
		}
		pendingSep = true
	}
	if b.Len() == 0 {
		return "x"
	}
	return b.String()
}

// writeFileAtomic writes dir/name through a temporary file in dir that is
// synced, set to mode 0644 and renamed over the target, so readers see
// either the old or the new file, never a partial one.
func writeFileAtomic(dir, name string, write func(io.Writer) error) (err error) {
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	bw := bufio.NewWriter(f)
	if err = write(bw); err != nil {
		return err
	}
	if err = bw.Flush(); err != nil {
		return err
	}
	if err = f.Chmod(0o644); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, name))
}

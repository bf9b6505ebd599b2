// s2ref: the Go S2 reference for Canopy's codec interop test (tests/s2_interop.rs).
// Built in GOPATH mode against Debian's golang-github-klauspost-compress-dev.
//
//	s2ref enc LEVEL   compress stdin as nats-server writes a leaf link: one complete
//	                  stream per flush (Reset, Write, Close), flush sizes cycling through
//	                  values around the 64 KiB and 1 MiB boundaries
//	s2ref dec         decompress stdin (any concatenation of streams) to stdout
package main

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/s2"
)

func writerOptions(level string) []s2.WriterOption {
	switch level {
	case "uncompressed":
		return []s2.WriterOption{s2.WriterConcurrency(1), s2.WriterUncompressed()}
	case "better":
		return []s2.WriterOption{s2.WriterConcurrency(1), s2.WriterBetterCompression()}
	case "best":
		return []s2.WriterOption{s2.WriterConcurrency(1), s2.WriterBestCompression()}
	default:
		return nil
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: s2ref enc LEVEL | dec")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "dec":
		if _, err := io.Copy(os.Stdout, s2.NewReader(os.Stdin)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	case "enc":
		level := "fast"
		if len(os.Args) > 2 {
			level = os.Args[2]
		}
		in, err := io.ReadAll(os.Stdin)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		sizes := []int{1, 17, 100, 4096, 32768, 65536, 70000, 1<<20 + 5, 250}
		w := s2.NewWriter(nil, writerOptions(level)...)
		var out bytes.Buffer
		for i := 0; len(in) > 0; i++ {
			n := sizes[i%len(sizes)]
			if n > len(in) {
				n = len(in)
			}
			w.Reset(&out)
			if _, err := w.Write(in[:n]); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			if err := w.Close(); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			in = in[n:]
		}
		os.Stdout.Write(out.Bytes())
	default:
		fmt.Fprintln(os.Stderr, "usage: s2ref enc LEVEL | dec")
		os.Exit(2)
	}
}

// The Go oracle of ferry's gozip tests: gzip stdin to stdout with this toolchain's
// compress/gzip at -level, in Write calls of -chunk bytes (default 32 KiB, io.Copy's size;
// read with io.ReadFull so the split does not depend on how stdin returns its bytes).
// Standard library only: build with GOTOOLCHAIN=local GOPROXY=off go build oracle.go.
package main

import (
	"bufio"
	"compress/gzip"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	level := flag.Int("level", gzip.DefaultCompression, "gzip level (-2 … 9)")
	chunk := flag.Int("chunk", 32*1024, "bytes per Write call")
	flag.Parse()
	out := bufio.NewWriterSize(os.Stdout, 1<<16)
	zw, err := gzip.NewWriterLevel(out, *level)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	in := bufio.NewReaderSize(os.Stdin, 1<<16)
	buf := make([]byte, *chunk)
	for {
		n, err := io.ReadFull(in, buf)
		if n > 0 {
			if _, werr := zw.Write(buf[:n]); werr != nil {
				fmt.Fprintln(os.Stderr, werr)
				os.Exit(1)
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	if err := zw.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := out.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/ovs-storage/ovs/framework/api"
)

// sizeValue is a flag holding a size in bytes, given as "10GiB", "4k", ...
// (api.ParseSize). A bad size is a flag error.
type sizeValue int64

func (s *sizeValue) Set(text string) error {
	n, err := api.ParseSize(text)
	if err != nil {
		var se *api.SizeError
		if errors.As(err, &se) {
			return errors.New(se.Reason) // pflag already quotes the input
		}
		return err
	}
	*s = sizeValue(n)
	return nil
}

func (s *sizeValue) String() string {
	if *s == 0 {
		return ""
	}
	return api.FormatSize(int64(*s))
}

func (s *sizeValue) Type() string { return "size" }

// outputFormat is the -o/--output flag: table (for humans) or json.
type outputFormat string

const (
	outputTable outputFormat = "table"
	outputJSON  outputFormat = "json"
)

func (o *outputFormat) Set(text string) error {
	switch f := outputFormat(text); f {
	case outputTable, outputJSON:
		*o = f
		return nil
	}
	return fmt.Errorf("must be %q or %q", outputTable, outputJSON)
}

func (o *outputFormat) String() string { return string(*o) }
func (o *outputFormat) Type() string   { return "format" }

// addOutputFlag adds -o/--output to cmd and returns where it is stored.
func addOutputFlag(cmd *cobra.Command) *outputFormat {
	o := outputTable
	cmd.Flags().VarP(&o, "output", "o", "output format: table or json")
	return &o
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

package dockerfile_test

import (
	"context"
	"errors"
	"io"
	goruntime "runtime"

	"github.com/pier-dev/pier/internal/baseimage"
)

func goarch() string { return goruntime.GOARCH }

// noBases answers every base as missing (the tests build no pier bases).
type noBases struct{}

func (noBases) Get(context.Context, string, io.Writer) (baseimage.Base, error) {
	return baseimage.Base{}, errors.New("no bases in this test")
}
